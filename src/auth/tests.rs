use super::*;

fn users(extra: &str) -> Users {
    let v = ScramVerifier::new("s3cret").encode();
    let text = format!(
        "[[user]]\nname = \"ingest\"\npermission = \"read-write\"\npassword = \"{v}\"\ntokens = [\"{}\"]\n{extra}",
        token_digest_text("tok-1")
    );
    Users::parse(&text, "users.toml").unwrap()
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))).into_bytes()
}

#[test]
fn a_verifier_checks_its_password_only() {
    let v = ScramVerifier::new("pa:ss wörd");
    assert!(v.check("pa:ss wörd".as_bytes()));
    assert!(!v.check(b"pa:ss word"));
    let back = ScramVerifier::parse(&v.encode()).unwrap();
    assert!(back.check("pa:ss wörd".as_bytes()));
    assert_eq!(back.stored_key, v.stored_key);
    // Debug never shows key material.
    assert!(!format!("{v:?}").contains(&STANDARD.encode(v.stored_key)));
}

#[test]
fn verifiers_answer_the_rfc_7677_exchange() {
    // RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil".
    let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let v = ScramVerifier::derive(b"pencil", &salt, 4096);
    let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
        r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
        c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let proof = STANDARD
        .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        .unwrap();
    let client_signature = hmac_sha256(&v.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof
        .iter()
        .zip(client_signature)
        .map(|(a, b)| a ^ b)
        .collect();
    assert_eq!(sha256(&client_key), v.stored_key);
    assert_eq!(
        STANDARD.encode(hmac_sha256(&v.server_key, auth_message.as_bytes())),
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

#[test]
fn bad_verifiers_and_files_say_what_is_wrong() {
    for (text, needle) in [
        ("plain-password", "not a SCRAM-SHA-256 verifier"),
        ("SCRAM-SHA-256$10:c2FsdA==$AA==:AA==", "iteration count 10"),
        ("SCRAM-SHA-256$4096:***$AA==:AA==", "the salt is not base64"),
        (
            "SCRAM-SHA-256$4096:c2FsdA==$AA==:AA==",
            "StoredKey is not 32 bytes",
        ),
    ] {
        let e = ScramVerifier::parse(text).unwrap_err();
        assert!(e.contains(needle), "{text}: {e}");
    }
    for (text, needle) in [
        ("", "no [[user]] entries"),
        ("[[user]]\nname = \"a\"\npermission = \"root\"\ntokens = []", "permission \"root\""),
        ("[[user]]\nname = \"a\"\npermission = \"admin\"", "could never log in"),
        ("[[user]]\nname = \"a\"\npermission = \"admin\"\npassword = \"hunter2\"", "plain-text password is never accepted"),
        ("[[user]]\nname = \"a\"\npermission = \"admin\"\ntokens = [\"abc\"]", "sha256:<64 hex digits>"),
        ("[[user]]\nname = \"a b\"\npermission = \"admin\"\ntokens = []", "a space"),
        ("[[user]]\nname = \"a\"\npermission = \"admin\"\nilp_key_x = \"AAAA\"", "both ilp_key_x and ilp_key_y"),
        ("[[user]]\nname = \"a\"\npermission = \"admin\"\nilp_key_x = \"AQ\"\nilp_key_y = \"AQ\"", "not a point on P-256"),
        ("[[user]]\nname = \"a\"\npermission = \"admin\"\npasword = \"x\"", "unknown field"),
    ] {
        let e = Users::parse(text, "users.toml").unwrap_err();
        assert!(e.contains(needle), "{text:?}: {e}");
        assert!(e.starts_with("users.toml"), "{e}");
    }
}

#[test]
fn passwords_are_saslprepped_as_libpq_does() {
    // U+00A0 (no-break space) maps to a space under SASLprep.
    let v = ScramVerifier::new("a\u{a0}b");
    assert!(v.check("a b".as_bytes()));
    assert!(v.check("a\u{a0}b".as_bytes()));
    // Refused by SASLprep (a control character): used as it is.
    let v = ScramVerifier::new("a\u{7}b");
    assert!(v.check("a\u{7}b".as_bytes()));
}

#[test]
fn http_credentials() {
    let auth = Auth::new(users(""));
    assert!(auth.cached(&basic("ingest", "s3cret")).is_none());
    let p = auth.http(Some(&basic("ingest", "s3cret"))).unwrap();
    assert_eq!(auth.cached(&basic("ingest", "s3cret")).as_ref(), Some(&p));
    assert!(auth.cached(&basic("ingest", "wrong")).is_none());
    assert_eq!(
        (p.user.as_str(), p.permission),
        ("ingest", Permission::Write)
    );
    // Checked again (callers ask the cache first), same answer.
    assert_eq!(auth.http(Some(&basic("ingest", "s3cret"))).unwrap(), p);
    assert_eq!(auth.http(Some(b"Bearer tok-1")).unwrap(), p);
    assert_eq!(
        auth.http(Some(&basic("ingest", "wrong"))),
        Err(Denied::Invalid)
    );
    assert_eq!(
        auth.http(Some(&basic("nobody", "s3cret"))),
        Err(Denied::Invalid)
    );
    assert_eq!(auth.http(Some(b"Bearer tok-2")), Err(Denied::Invalid));
    assert_eq!(auth.http(None), Err(Denied::Missing));
    assert!(matches!(
        auth.http(Some(b"Digest x")),
        Err(Denied::Malformed(_))
    ));
    assert!(matches!(
        auth.http(Some(b"Basic !!!")),
        Err(Denied::Malformed(_))
    ));
    assert!(matches!(
        auth.http(Some(
            format!("Basic {}", STANDARD.encode("nocolon")).as_bytes()
        )),
        Err(Denied::Malformed(_))
    ));
    // Off: everyone is an admin, whatever they send.
    let off = Auth::off();
    assert_eq!(off.http(None).unwrap().permission, Permission::Admin);
}

#[test]
fn permissions_order() {
    let p = Principal {
        user: "r".into(),
        permission: Permission::Read,
    };
    assert!(p.require(Permission::Read, &"a query").is_ok());
    let e = p.require(Permission::Write, &"ILP writes").unwrap_err();
    assert_eq!(
        e,
        "permission denied: user \"r\" is read-only; ILP writes needs read-write"
    );
    assert!(Principal::anonymous()
        .require(Permission::Admin, &"SWITCH ROLE")
        .is_ok());
}

#[test]
fn ilp_challenge_signatures() {
    let (d, x, y) = new_ilp_key();
    let auth = Auth::new(users(&format!(
        "[[user]]\nname = \"sensor\"\npermission = \"read-write\"\nilp_key_x = \"{x}\"\nilp_key_y = \"{y}\"\n"
    )));
    let challenge = Auth::ilp_challenge();
    assert_eq!(challenge.len(), 512);
    assert!(challenge.iter().all(|b| (0x20..0x7f).contains(b)));
    // Sign as the clients do: ECDSA P-256 SHA-256, r ‖ s, base64.
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(&x).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(&y).unwrap());
    let rng = aws_lc_rs::rand::SystemRandom::new();
    for alg in [
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    ] {
        let kp = signature::EcdsaKeyPair::from_private_key_and_public_key(
            alg,
            &URL_SAFE_NO_PAD.decode(&d).unwrap(),
            &point,
        )
        .unwrap();
        let sig = STANDARD.encode(kp.sign(&rng, &challenge).unwrap());
        let p = auth
            .verify_ilp("sensor", &challenge, sig.as_bytes())
            .unwrap();
        assert_eq!(p.user, "sensor");
        let mut other = challenge.clone();
        other[0] ^= 1;
        assert_eq!(
            auth.verify_ilp("sensor", &other, sig.as_bytes()),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.verify_ilp("ingest", &challenge, sig.as_bytes()),
            Err(Denied::Invalid)
        );
    }
    assert!(matches!(
        auth.verify_ilp("sensor", &challenge, b"%%%"),
        Err(Denied::Malformed(_))
    ));
}

#[test]
fn failures_slow_the_same_peer_down_and_are_counted() {
    let auth = Auth::new(users(""));
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let delays: Vec<_> = (0..8)
        .map(|_| auth.failed(Door::Http, Some(ip), "x", &Denied::Invalid))
        .collect();
    assert_eq!(delays[0], Duration::from_millis(100));
    assert_eq!(delays[1], Duration::from_millis(200));
    assert_eq!(delays[7], THROTTLE_DELAY_MAX);
    let other: IpAddr = "10.1.2.4".parse().unwrap();
    assert_eq!(
        auth.failed(Door::Pg, Some(other), "x", &Denied::Invalid),
        Duration::from_millis(100)
    );
    // Attempts from a failing address queue one after another, however
    // many connections they come on; others do not wait.
    let first = auth.admit(Some(ip));
    let second = auth.admit(Some(ip));
    assert!(
        second >= first + Duration::from_secs(4),
        "{first:?} {second:?}"
    );
    assert_eq!(
        auth.admit(Some("10.9.9.9".parse().unwrap())),
        Duration::ZERO
    );
    // A valid login from the address does not reset its slowdown.
    auth.succeeded(Door::Http);
    assert!(auth.admit(Some(ip)) > Duration::ZERO);
    assert_eq!(
        auth.failed(Door::Http, Some(ip), "x", &Denied::Invalid),
        THROTTLE_DELAY_MAX
    );
    let m = auth.metrics_text();
    assert!(
        m.contains("basalt_auth_failures_total{protocol=\"http\"} 9"),
        "{m}"
    );
    assert!(
        m.contains("basalt_auth_failures_total{protocol=\"pg\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("basalt_auth_logins_total{protocol=\"http\"} 1"),
        "{m}"
    );
}
