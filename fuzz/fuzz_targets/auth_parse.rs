//! The parsers of what an unauthenticated peer (or a users file) hands the
//! node. The first byte picks one: 0 a users file, 1 an HTTP
//! `Authorization` header, 2 an ILP/TCP signature line, 3 a SCRAM
//! verifier. None may panic; a users file that loads gives each user a way
//! to log in and a verifier that round-trips; no header or signature
//! passes but the real secrets.
#![no_main]

use std::sync::OnceLock;

use basalt::auth::{new_ilp_key, token_digest_text, Auth, Denied, Permission, ScramVerifier, Users};
use libfuzzer_sys::fuzz_target;

const PASSWORD: &str = "fuzz-pw";
const TOKEN: &str = "fuzz-token";

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let (_, x, y) = new_ilp_key();
        let text = format!(
            "[[user]]\nname = \"fuzz\"\npermission = \"read-write\"\npassword = \"{}\"\n\
             tokens = [\"{}\"]\nilp_key_x = \"{x}\"\nilp_key_y = \"{y}\"\n",
            ScramVerifier::new(PASSWORD).encode(),
            token_digest_text(TOKEN)
        );
        Auth::new(Users::parse(&text, "fuzz").expect("the fuzz users file loads"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(users) = Users::parse(text, "fuzz") {
                assert!(!users.is_empty());
            }
        }
        1 => match auth().http(Some(rest)) {
            Ok(p) => {
                assert_eq!((p.user.as_str(), p.permission), ("fuzz", Permission::Write));
                let text = String::from_utf8_lossy(rest);
                assert!(
                    text.contains(TOKEN) || basalt::auth::basic_user(rest).as_deref() == Some("fuzz"),
                    "accepted {text:?}"
                );
            }
            Err(Denied::Missing) => panic!("a header read as no header"),
            Err(_) => {}
        },
        2 => {
            // A signature the fuzzer made up never verifies.
            assert!(auth().verify_ilp("fuzz", b"the challenge", rest).is_err());
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(v) = ScramVerifier::parse(text) {
                let again = ScramVerifier::parse(&v.encode()).expect("an encoded verifier parses");
                assert_eq!(
                    (&again.salt, again.iterations, again.stored_key, again.server_key),
                    (&v.salt, v.iterations, v.stored_key, v.server_key)
                );
                assert!(!v.check(b"not the password") || text.is_empty());
            }
        }
    }
});
