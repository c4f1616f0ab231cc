//! Proptest strategies for batches of every column type, shared by the
//! codec and segment tests.

use proptest::prelude::*;

use super::{Batch, BatchBuilder, Value};
use crate::table::schema::PartitionBy;
use crate::table::{ColumnType, Schema};

/// One column of each type; the TIMESTAMP column is the designated one.
pub fn all_types() -> Schema {
    let cols: Vec<(&str, ColumnType)> = ColumnType::ALL.iter().map(|t| (t.name(), *t)).collect();
    Schema::new(cols, Some("TIMESTAMP"), PartitionBy::Day).expect("valid schema")
}

#[derive(Clone, Debug)]
pub enum OwnedValue {
    Boolean(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Timestamp(i64),
    Symbol(String),
    Varchar(String),
}

impl OwnedValue {
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Boolean(v) => Value::Boolean(*v),
            OwnedValue::Byte(v) => Value::Byte(*v),
            OwnedValue::Short(v) => Value::Short(*v),
            OwnedValue::Int(v) => Value::Int(*v),
            OwnedValue::Long(v) => Value::Long(*v),
            OwnedValue::Float(v) => Value::Float(*v),
            OwnedValue::Double(v) => Value::Double(*v),
            OwnedValue::Timestamp(v) => Value::Timestamp(*v),
            OwnedValue::Symbol(v) => Value::Symbol(v),
            OwnedValue::Varchar(v) => Value::Varchar(v),
        }
    }
}

/// A value of `ty`, or null (20%).
pub fn value_strategy(ty: ColumnType) -> BoxedStrategy<Option<OwnedValue>> {
    let v: BoxedStrategy<OwnedValue> = match ty {
        ColumnType::Boolean => any::<bool>().prop_map(OwnedValue::Boolean).boxed(),
        ColumnType::Byte => any::<i8>().prop_map(OwnedValue::Byte).boxed(),
        ColumnType::Short => any::<i16>().prop_map(OwnedValue::Short).boxed(),
        ColumnType::Int => any::<i32>().prop_map(OwnedValue::Int).boxed(),
        ColumnType::Long => any::<i64>().prop_map(OwnedValue::Long).boxed(),
        ColumnType::Float => any::<f32>().prop_map(OwnedValue::Float).boxed(),
        ColumnType::Double => any::<f64>().prop_map(OwnedValue::Double).boxed(),
        ColumnType::Timestamp => any::<i64>().prop_map(OwnedValue::Timestamp).boxed(),
        ColumnType::Symbol => "[a-c]{0,2}".prop_map(OwnedValue::Symbol).boxed(),
        ColumnType::Varchar => ".{0,8}".prop_map(OwnedValue::Varchar).boxed(),
    };
    proptest::option::weighted(0.8, v).boxed()
}

/// A row of [`all_types`]; the designated timestamp is always valid.
pub fn row_strategy() -> impl Strategy<Value = Vec<Option<OwnedValue>>> {
    ColumnType::ALL
        .iter()
        .map(|t| {
            if *t == ColumnType::Timestamp {
                (crate::table::schema::TIMESTAMP_MIN_US..=crate::table::schema::TIMESTAMP_MAX_US)
                    .prop_map(|v| Some(OwnedValue::Timestamp(v)))
                    .boxed()
            } else {
                value_strategy(*t)
            }
        })
        .collect::<Vec<_>>()
}

/// The batch of `rows` (nulls where `None`).
pub fn batch_of(schema: &Schema, rows: &[Vec<Option<OwnedValue>>]) -> Batch {
    let mut b = BatchBuilder::new(schema);
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if let Some(v) = v {
                b.set(i, v.as_value()).expect("value fits its column");
            }
        }
        b.finish_row().expect("row has a timestamp");
    }
    b.finish()
}
