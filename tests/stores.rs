//! Object stores opened from connection strings: what replication relies
//! on, create-once puts and listing after a key, works through
//! `basalt::store` on memory, fs, and real protocol servers on loopback
//! (moto for S3, Azurite for Azure Blob).

mod servers;

use basalt::store::{Store, StoreConfig};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn create_once_and_list_after(store: &Store) {
    run(async {
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let key = |n: u64| store.path(&["cpu", &format!("{n:020}.seg")]);
        for n in 1..=3 {
            store
                .inner
                .put_opts(
                    &key(n),
                    PutPayload::from(vec![n as u8; 1000]),
                    create.clone(),
                )
                .await
                .unwrap_or_else(|e| panic!("{}: put {n}: {e}", store.config));
        }
        let again = store
            .inner
            .put_opts(&key(2), PutPayload::from_static(b"y"), create)
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{}: a second create of one key must fail with AlreadyExists, got {again:?}",
            store.config
        );
        let got = store
            .inner
            .get(&key(2))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], &[2u8; 1000][..], "the first write stays");
        let keys: Vec<String> = store
            .list_after(&store.path(&["cpu"]), &key(1))
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(keys, vec![key(2).to_string(), key(3).to_string()]);
    });
}

#[test]
fn memory() {
    create_once_and_list_after(&StoreConfig::parse("memory::").unwrap().build().unwrap());
}

#[test]
fn fs() {
    let dir = tempfile::tempdir().unwrap();
    let conn = format!("fs::root={};", dir.path().join("store").display());
    create_once_and_list_after(&StoreConfig::parse(&conn).unwrap().build().unwrap());
}

#[test]
fn s3_on_moto() {
    let server = servers::moto("basalt");
    let conn = format!(
        "s3::bucket=basalt;root=node-a;region=us-east-1;endpoint=http://127.0.0.1:{};access_key_id=test;secret_access_key=test;allow_http=true;",
        server.port
    );
    let store = StoreConfig::parse(&conn).unwrap().build().unwrap();
    assert!(!store.config.to_string().contains("secret_access_key=test"));
    create_once_and_list_after(&store);
}

#[test]
fn azure_blob_on_azurite() {
    let server = servers::azurite("basalt");
    let conn = format!(
        "azblob::container=basalt;root=node-a;account_name=devstoreaccount1;account_key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;endpoint=http://127.0.0.1:{}/devstoreaccount1;",
        server.port
    );
    let store = StoreConfig::parse(&conn).unwrap().build().unwrap();
    create_once_and_list_after(&store);
}
