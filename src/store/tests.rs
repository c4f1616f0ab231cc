use super::*;

fn err(conn: &str) -> String {
    StoreConfig::parse(conn)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn every_transport_parses() {
    let c = StoreConfig::parse("s3::bucket=b;root=r/x;region=eu-west-1;endpoint=http://127.0.0.1:9;access_key_id=AK;secret_access_key=SK;allow_http=true;").unwrap();
    assert_eq!(c.kind, StoreKind::S3);
    assert_eq!(c.get("bucket"), Some("b"));
    assert_eq!(c.root().as_ref(), "r/x");
    let c = StoreConfig::parse(
        "azblob::container=c;account_name=devstoreaccount1;account_key=k;use_emulator=true",
    )
    .unwrap();
    assert_eq!(c.kind, StoreKind::Azure);
    let c = StoreConfig::parse("gcs::bucket=b;root=r;credential_path=/nope.json;").unwrap();
    assert_eq!(c.kind, StoreKind::Gcs);
    assert_eq!(
        StoreConfig::parse("fs::root=/tmp/x;").unwrap().kind,
        StoreKind::Fs
    );
    assert_eq!(
        StoreConfig::parse("memory::").unwrap().kind,
        StoreKind::Memory
    );
}

#[test]
fn bad_strings_are_clear_errors() {
    assert!(err("bucket=b").contains("does not start with a transport"));
    assert!(err("ftp::root=x").contains("unknown object store transport \"ftp\""));
    let e = err("s3::bucket=b;bukket=c;");
    assert!(
        e.contains("\"bukket\"") && e.contains("it takes: bucket, root"),
        "{e}"
    );
    assert!(err("s3::root=r;").contains("s3:: needs bucket=..."));
    assert!(err("azblob::root=r").contains("needs container="));
    assert!(err("fs::").contains("needs root="));
    assert!(err("s3::bucket=b;bucket=c").contains("given twice"));
    assert!(err("s3::bucket=b;allow_http=yes").contains("true or false"));
    assert!(err("s3::bucket").contains("is not key=value"));
    assert!(err("memory::root=x").contains("memory:: has no key"));
}

#[test]
fn secrets_are_never_printed() {
    let c = StoreConfig::parse(
        "s3::bucket=b;access_key_id=AKIA1;secret_access_key=TOPSECRET;session_token=TOK",
    )
    .unwrap();
    let shown = format!("{c} {c:?}");
    assert!(
        !shown.contains("TOPSECRET") && !shown.contains("TOK;"),
        "{shown}"
    );
    assert!(shown.contains("secret_access_key=****"), "{shown}");
    let c = StoreConfig::parse("azblob::container=c;account_key=AZSECRET").unwrap();
    assert!(!format!("{c}").contains("AZSECRET"));
    // Errors from building carry no secret either.
    let c = StoreConfig::parse("gcs::bucket=b;credential_path=/definitely/missing.json").unwrap();
    let e = c.build().expect_err("missing credential file").to_string();
    assert!(e.contains("gcs"), "{e}");
}

#[test]
fn cloud_stores_build_without_a_request() {
    for conn in [
        "s3::bucket=b;region=us-east-1;endpoint=http://127.0.0.1:1;access_key_id=a;secret_access_key=s;allow_http=true",
        "azblob::container=c;use_emulator=true",
    ] {
        StoreConfig::parse(conn).unwrap().build().unwrap();
    }
}
