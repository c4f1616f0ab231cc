//! Any bytes given to the WAL payload decoder give a batch or a typed error:
//! no panic, no unbounded allocation. A decoded batch re-encodes to the same bytes.
#![no_main]

use basalt::batch::codec;
use basalt::table::{ColumnType, PartitionBy, Schema};
use libfuzzer_sys::fuzz_target;

fn schemas() -> [Schema; 2] {
    let all: Vec<(&str, ColumnType)> = ColumnType::ALL.iter().map(|t| (t.name(), *t)).collect();
    [
        Schema::reference_cpu(),
        Schema::new(all, Some("TIMESTAMP"), PartitionBy::Day).expect("valid schema"),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let schema = &schemas()[(pick & 1) as usize];
    if let Ok(batch) = codec::decode(payload, schema) {
        batch
            .validate(schema)
            .expect("a decoded batch fits its schema");
        let mut again = Vec::new();
        codec::encode(&batch, &mut again);
        let back = codec::decode(&again, schema).expect("re-encoded batch decodes");
        assert_eq!(back, batch);
    }
});
