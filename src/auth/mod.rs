//! Who may do what on this node, and the proof of it (docs/security.md).
//!
//! Users come from a TOML file (`--users`) or the environment
//! (`BASALT_USERS`), with their secrets stored hashed only:
//!
//! - a password as a SCRAM-SHA-256 verifier (PostgreSQL's own
//!   `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), which
//!   checks HTTP basic credentials and runs PostgreSQL's SCRAM exchange
//!   without the password ever being on the server;
//! - optionally PostgreSQL's md5 form (`md5<hex>`), for old drivers;
//! - bearer tokens as SHA-256 digests (`sha256:<hex>`);
//! - an ILP/TCP public key (`ilp_key_x`, `ilp_key_y`: the clients'
//!   `token_x`/`token_y`), whose private half signs the server's challenge.
//!
//! basalt's own comparisons of secret material are constant-time (pgwire's
//! SCRAM and md5 checks compare with `==`). Failed logins are counted
//! (`/metrics`), written to the audit log, and slowed down per peer
//! address.

pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand::SecureRandom, signature};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// What a user may do. Each level includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// Queries (`/exec`, `/exp`, QWP egress, PostgreSQL), `/status`, `/metrics`.
    Read,
    /// And writes: ILP over HTTP and TCP, QWP ingress, CREATE/DROP TABLE.
    Write,
    /// And what changes the node: SWITCH ROLE, BACKUP DATABASE.
    Admin,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read-only",
            Permission::Write => "read-write",
            Permission::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Permission> {
        Some(match s {
            "read-only" | "read" => Permission::Read,
            "read-write" | "write" => Permission::Write,
            "admin" => Permission::Admin,
            _ => return None,
        })
    }
}

/// Whom a request runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Empty when authentication is off.
    pub user: String,
    pub permission: Permission,
}

impl Principal {
    /// Authentication off: every request may do everything.
    pub fn anonymous() -> Principal {
        Principal {
            user: String::new(),
            permission: Permission::Admin,
        }
    }

    /// `Err` with the message a client is shown (HTTP 403, PostgreSQL
    /// 42501) when this principal may not do `what`.
    pub fn require(&self, need: Permission, what: &dyn std::fmt::Display) -> Result<(), String> {
        if self.permission >= need {
            return Ok(());
        }
        Err(format!(
            "permission denied: user {:?} is {}; {what} needs {}",
            self.user,
            self.permission.name(),
            need.name()
        ))
    }
}

/// PBKDF2 rounds of verifiers made by `basalt user password` (PostgreSQL's
/// default).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// Verifiers with fewer rounds are refused when the users are loaded.
const SCRAM_ITERATIONS_MIN: u32 = 4096;
/// Verifiers with more rounds are refused too: each HTTP basic login costs
/// the rounds once (then it is cached) on the shard that serves it.
const SCRAM_ITERATIONS_MAX: u32 = 1 << 16;

/// A password, as PostgreSQL stores it for SCRAM-SHA-256.
#[derive(Clone)]
pub struct ScramVerifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(<redacted>)")
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn eq_ct(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// N bytes from the system's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    b
}

/// The password as SCRAM hashes it: SASLprep-normalized, as libpq does,
/// or as it is when SASLprep refuses it (PostgreSQL does the same).
fn normalize(password: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(std::borrow::Cow::Owned(p))) => std::borrow::Cow::Owned(p.into_bytes()),
        _ => std::borrow::Cow::Borrowed(password),
    }
}

impl ScramVerifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn new(password: &str) -> ScramVerifier {
        Self::derive(password.as_bytes(), &random_bytes::<16>(), SCRAM_ITERATIONS)
    }

    fn salted(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let password = normalize(password);
        let password = password.as_ref();
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations.max(1)).expect("not zero"),
            salt,
            password,
            &mut salted,
        );
        salted
    }

    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = Self::salted(password, salt, iterations);
        ScramVerifier {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&hmac_sha256(&salted, b"Client Key")),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one this verifier was made from. Costs the
    /// PBKDF2 rounds; the comparison is constant-time.
    pub fn check(&self, password: &[u8]) -> bool {
        let salted = Self::salted(password, &self.salt, self.iterations);
        let stored = sha256(&hmac_sha256(&salted, b"Client Key"));
        eq_ct(&stored, &self.stored_key)
    }

    /// PostgreSQL's text form.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let shape = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (make one with `basalt user password`)";
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| format!("not a SCRAM-SHA-256 verifier: {shape}"))?;
        let (params, keys) = rest.split_once('$').ok_or(shape)?;
        let (iterations, salt) = params.split_once(':').ok_or(shape)?;
        let (stored, server) = keys.split_once(':').ok_or(shape)?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| format!("iteration count {iterations:?} is not a number: {shape}"))?;
        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&iterations) {
            return Err(format!(
                "iteration count {iterations} is outside {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}"
            ));
        }
        let b64 = |what: &str, v: &str| {
            STANDARD
                .decode(v)
                .map_err(|e| format!("{what} is not base64 ({e}): {shape}"))
        };
        let salt = b64("the salt", salt)?;
        if salt.is_empty() {
            return Err("the salt is empty".into());
        }
        let key = |what: &str, v: &str| -> Result<[u8; 32], String> {
            b64(what, v)?
                .try_into()
                .map_err(|_| format!("{what} is not 32 bytes"))
        };
        Ok(ScramVerifier {
            salt,
            iterations,
            stored_key: key("StoredKey", stored)?,
            server_key: key("ServerKey", server)?,
        })
    }
}

/// A bearer token as stored: `sha256:<hex>`.
pub fn token_digest_text(token: &str) -> String {
    format!("sha256:{}", hex(&sha256(token.as_bytes())))
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The user an HTTP `Authorization: Basic` header claims to be (for the
/// audit line of a failed login; never the password).
pub fn basic_user(header: &[u8]) -> Option<String> {
    let h = std::str::from_utf8(header).ok()?.trim();
    let (scheme, value) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(value.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split_once(':')?.0.chars().take(64).collect())
}

/// A new random bearer token (the clients' `token=`), 32 bytes base64url.
pub fn new_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A new ILP/TCP key pair, in the clients' encoding: (`token` = the private
/// scalar d, `token_x`, `token_y`), each base64url without padding.
pub fn new_ilp_key() -> (String, String, String) {
    use aws_lc_rs::encoding::AsBigEndian;
    let kp = signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
        .expect("key generation works");
    let d = kp
        .private_key()
        .as_be_bytes()
        .expect("a P-256 private key has a big-endian form");
    let point = signature::KeyPair::public_key(&kp).as_ref().to_vec();
    (
        URL_SAFE_NO_PAD.encode(d.as_ref()),
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

/// One user, as loaded.
pub struct User {
    pub name: String,
    pub permission: Permission,
    pub password: Option<ScramVerifier>,
    /// PostgreSQL's `md5` + hex(md5(password ‖ user)), for md5 auth.
    pub password_md5: Option<String>,
    tokens: Vec<[u8; 32]>,
    /// The uncompressed P-256 point 0x04 ‖ x ‖ y.
    ilp_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secret material, not even hashed.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("permission", &self.permission)
            .finish_non_exhaustive()
    }
}

impl User {
    pub(crate) fn principal(&self) -> Principal {
        Principal {
            user: self.name.clone(),
            permission: self.permission,
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    permission: String,
    password: Option<String>,
    password_md5: Option<String>,
    #[serde(default)]
    tokens: Vec<String>,
    ilp_key_x: Option<String>,
    ilp_key_y: Option<String>,
}

/// Names a users file may not give: they would read as no user.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("a user name must be 1 to 63 bytes".into());
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "user name {name:?} has a colon, a space or a control character"
        ));
    }
    Ok(())
}

fn ilp_point(x: &str, y: &str) -> Result<Vec<u8>, String> {
    let coord = |what: &str, v: &str| -> Result<Vec<u8>, String> {
        let b = URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map_err(|e| format!("{what} is not base64url ({e})"))?;
        if b.len() > 32 {
            return Err(format!("{what} is {} bytes, more than P-256's 32", b.len()));
        }
        // Left-pad: some encoders drop leading zero bytes.
        let mut out = vec![0u8; 32 - b.len()];
        out.extend_from_slice(&b);
        Ok(out)
    };
    let mut point = vec![0x04];
    point.extend(coord("ilp_key_x", x)?);
    point.extend(coord("ilp_key_y", y)?);
    // Checked now, not at the first login: a point off the curve is refused.
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &point)
        .parse()
        .map_err(|_| "ilp_key_x/ilp_key_y are not a point on P-256".to_string())?;
    Ok(point)
}

/// The users of a node, by exact name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    /// Parses a users file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Users, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let mut by_name = HashMap::new();
        for (i, e) in file.user.into_iter().enumerate() {
            let at = format!("{origin}: user {} ({:?})", i + 1, e.name);
            check_name(&e.name).map_err(|m| format!("{at}: {m}"))?;
            let permission = Permission::parse(&e.permission).ok_or_else(|| {
                format!(
                    "{at}: permission {:?} is not one of read-only, read-write, admin",
                    e.permission
                )
            })?;
            let password = match &e.password {
                None => None,
                Some(p) => Some(ScramVerifier::parse(p).map_err(|m| {
                    format!("{at}: password: {m}; a plain-text password is never accepted")
                })?),
            };
            let password_md5 = match e.password_md5 {
                None => None,
                Some(m) => {
                    let ok = m.len() == 35
                        && m.starts_with("md5")
                        && m[3..].bytes().all(|b| b.is_ascii_hexdigit());
                    if !ok {
                        return Err(format!(
                            "{at}: password_md5 must be md5 followed by 32 hex digits (`basalt user password --md5-for USER` makes it)"
                        ));
                    }
                    Some(m.to_ascii_lowercase())
                }
            };
            let mut tokens = Vec::new();
            for t in &e.tokens {
                let d = t
                    .strip_prefix("sha256:")
                    .and_then(unhex)
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .ok_or_else(|| {
                        format!("{at}: a token must be stored as sha256:<64 hex digits> (`basalt user token` makes one); a plain token is never accepted")
                    })?;
                tokens.push(d);
            }
            let ilp_key = match (&e.ilp_key_x, &e.ilp_key_y) {
                (None, None) => None,
                (Some(x), Some(y)) => Some(ilp_point(x, y).map_err(|m| format!("{at}: {m}"))?),
                _ => return Err(format!("{at}: give both ilp_key_x and ilp_key_y")),
            };
            if password.is_none()
                && password_md5.is_none()
                && tokens.is_empty()
                && ilp_key.is_none()
            {
                return Err(format!(
                    "{at}: no password, password_md5, token or ilp_key: this user could never log in"
                ));
            }
            let user = User {
                name: e.name.clone(),
                permission,
                password,
                password_md5,
                tokens,
                ilp_key,
            };
            if by_name.insert(e.name.clone(), user).is_some() {
                return Err(format!("{at}: a second user with this name"));
            }
        }
        if by_name.is_empty() {
            return Err(format!(
                "{origin}: no [[user]] entries: add at least one (docs/security.md)"
            ));
        }
        Ok(Users { by_name })
    }

    pub fn load(path: &std::path::Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Where a login came in, for counting and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Http,
    IlpTcp,
    Pg,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::IlpTcp => "ilp_tcp",
            Door::Pg => "pg",
        }
    }
}

/// Why a login was refused, as the client is told. Unknown users and wrong
/// secrets read the same, so names cannot be probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credentials on a node that needs them.
    Missing,
    /// Credentials in a form this node does not read.
    Malformed(String),
    /// An unknown user or a wrong secret.
    Invalid,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing => f.write_str(
                "authentication required: send HTTP basic credentials (username, password) or a bearer token",
            ),
            Denied::Malformed(m) => write!(f, "unreadable credentials: {m}"),
            Denied::Invalid => f.write_str("invalid credentials"),
        }
    }
}

/// Successful HTTP basic logins remembered (by a digest of the header),
/// so each request does not pay the PBKDF2 rounds again.
const LOGIN_CACHE_MAX: usize = 4096;
/// Peers whose failures are remembered for the slowdown.
const THROTTLE_PEERS_MAX: usize = 65_536;
/// A peer's failures are forgotten after this long without one.
const THROTTLE_FORGET: Duration = Duration::from_secs(60);
/// The slowdown doubles per recent failure from 100 ms, up to this.
const THROTTLE_DELAY_MAX: Duration = Duration::from_secs(5);

/// Authentication of a running node: the users (or none: off), the failed
/// logins so far, and the per-peer slowdown.
#[derive(Debug, Default)]
pub struct Auth {
    users: Option<Users>,
    failures: [AtomicU64; 3],
    logins: [AtomicU64; 3],
    cache: Mutex<HashMap<[u8; 32], Principal>>,
    /// Per address: recent failures, the last one, the next free slot.
    throttle: Mutex<HashMap<IpAddr, (u32, Instant, Instant)>>,
}

impl Auth {
    /// Authentication off: everyone is an admin.
    pub fn off() -> Auth {
        Auth::default()
    }

    pub fn new(users: Users) -> Auth {
        Auth {
            users: Some(users),
            ..Auth::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.users.is_some()
    }

    pub fn users(&self) -> Option<&Users> {
        self.users.as_ref()
    }

    fn slot(door: Door) -> usize {
        door as usize
    }

    /// Checks an HTTP `Authorization` header: `Basic base64(user:password)`
    /// or `Bearer <token>`, and remembers it when it logs in (see
    /// [`Auth::cached`], which callers ask first).
    pub fn http(&self, authorization: Option<&[u8]>) -> Result<Principal, Denied> {
        let Some(users) = &self.users else {
            return Ok(Principal::anonymous());
        };
        let Some(h) = authorization else {
            return Err(Denied::Missing);
        };
        let h = h.trim_ascii();
        let key = sha256(h);
        let h = std::str::from_utf8(h)
            .map_err(|_| Denied::Malformed("the Authorization header is not text".into()))?;
        let (scheme, value) = h.split_once(' ').unwrap_or((h, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let digest = sha256(value.as_bytes());
            // Every user's every token is compared: the time taken does not
            // depend on which one matches.
            let mut found = None;
            for u in users.by_name.values() {
                for t in &u.tokens {
                    if eq_ct(t, &digest) && found.is_none() {
                        found = Some(u.principal());
                    }
                }
            }
            let p = found.ok_or(Denied::Invalid)?;
            self.remember(key, &p);
            return Ok(p);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            // Not echoed: a client that sent a bare secret would see it in
            // the answer and the audit log.
            return Err(Denied::Malformed(
                "the Authorization scheme is not Basic or Bearer".into(),
            ));
        }
        let raw = STANDARD
            .decode(value)
            .map_err(|_| Denied::Malformed("the Basic credentials are not base64".into()))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Denied::Malformed("the Basic credentials are not UTF-8".into()))?;
        let (user, password) = text.split_once(':').ok_or_else(|| {
            Denied::Malformed("the Basic credentials have no ':' between user and password".into())
        })?;
        let p = match users
            .get(user)
            .and_then(|u| Some((u, u.password.as_ref()?)))
        {
            Some((u, v)) if v.check(password.as_bytes()) => u.principal(),
            Some(_) => return Err(Denied::Invalid),
            None => {
                // As long as a real check, so names (and users without a
                // password) cannot be told apart by time.
                let _ = ScramVerifier::salted(password.as_bytes(), b"basalt", SCRAM_ITERATIONS);
                return Err(Denied::Invalid);
            }
        };
        self.remember(key, &p);
        Ok(p)
    }

    /// ILP/TCP: the public key of `key_id` (the clients' `username`).
    pub fn ilp_key(&self, key_id: &str) -> Option<(&[u8], Principal)> {
        let u = self.users.as_ref()?.get(key_id)?;
        Some((u.ilp_key.as_deref()?, u.principal()))
    }

    /// ILP/TCP: checks `signature_b64` (standard base64 of an ECDSA P-256
    /// SHA-256 signature: 64 bytes r ‖ s as the Rust, C and Python clients
    /// send it, or ASN.1 DER as Java's may) of `challenge` by the key of
    /// `key_id`.
    pub fn verify_ilp(
        &self,
        key_id: &str,
        challenge: &[u8],
        signature_b64: &[u8],
    ) -> Result<Principal, Denied> {
        let text = signature_b64.trim_ascii();
        let sig = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(
                text.strip_suffix(b"==")
                    .or(text.strip_suffix(b"="))
                    .unwrap_or(text),
            )
            .map_err(|_| Denied::Malformed("the signature is not base64".into()))?;
        let Some((point, principal)) = self.ilp_key(key_id) else {
            return Err(Denied::Invalid);
        };
        let alg = if sig.len() == 64 {
            &signature::ECDSA_P256_SHA256_FIXED
        } else {
            &signature::ECDSA_P256_SHA256_ASN1
        };
        signature::UnparsedPublicKey::new(alg, point)
            .verify(challenge, &sig)
            .map_err(|_| Denied::Invalid)?;
        Ok(principal)
    }

    /// A new ILP/TCP challenge: 512 random printable bytes (no newline), as
    /// QuestDB sends them.
    pub fn ilp_challenge() -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        random_bytes::<512>()
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
            .collect()
    }

    /// How long a login attempt from `peer` must wait before it is checked:
    /// nothing for an address without recent failures; otherwise each
    /// attempt takes the next slot after the previous one's (100 ms,
    /// doubling per failure, at most 5 s), so parallel connections from
    /// one address do not multiply its guesses.
    pub fn admit(&self, peer: Option<IpAddr>) -> Duration {
        let Some(ip) = peer else {
            return Duration::ZERO;
        };
        let mut t = self.throttle.lock().expect("not poisoned");
        let Some(e) = t.get_mut(&ip) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        if now.duration_since(e.1) >= THROTTLE_FORGET {
            t.remove(&ip);
            return Duration::ZERO;
        }
        let start = e.2.max(now);
        e.2 = start + Self::delay(e.0);
        start - now
    }

    fn delay(failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        (Duration::from_millis(100) * (1u32 << shift)).min(THROTTLE_DELAY_MAX)
    }

    /// Counts a successful login.
    pub fn succeeded(&self, door: Door) {
        // The address's failures are not forgotten: a guesser holding one
        // valid login must not reset its own slowdown with it. They expire
        // a minute after the last one.
        self.logins[Self::slot(door)].fetch_add(1, Ordering::Relaxed);
    }

    /// Whom this exact `Authorization` header logged in as, when it did
    /// before (and is remembered): such a request is not a guess, is not
    /// held back, and costs no PBKDF2.
    pub fn cached(&self, authorization: &[u8]) -> Option<Principal> {
        let key = sha256(authorization.trim_ascii());
        self.cache.lock().expect("not poisoned").get(&key).cloned()
    }

    fn remember(&self, key: [u8; 32], p: &Principal) {
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= LOGIN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, p.clone());
    }

    /// Counts a failed login, writes the audit line, and returns how long
    /// to hold the answer back: 100 ms, doubling per recent failure from
    /// the same address, at most 5 s.
    pub fn failed(&self, door: Door, peer: Option<IpAddr>, user: &str, why: &Denied) -> Duration {
        self.failures[Self::slot(door)].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "basalt::audit",
            event = "login_failed",
            protocol = door.name(),
            peer = peer.map(|p| p.to_string()).unwrap_or_default(),
            // Debug-quoted: a claimed name may hold newlines.
            user = ?user,
            reason = %why,
            "login failed"
        );
        let Some(ip) = peer else {
            return Duration::from_millis(100);
        };
        let mut t = self.throttle.lock().expect("not poisoned");
        if t.len() >= THROTTLE_PEERS_MAX {
            t.retain(|_, (_, at, _)| at.elapsed() < THROTTLE_FORGET);
            if t.len() >= THROTTLE_PEERS_MAX {
                t.clear();
            }
        }
        let now = Instant::now();
        let e = t.entry(ip).or_insert((0, now, now));
        if e.1.elapsed() >= THROTTLE_FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        Self::delay(e.0)
    }

    /// Prometheus lines: logins and failed logins by protocol.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (name, help, counts) in [
            (
                "basalt_auth_failures_total",
                "Failed logins (wrong or missing credentials).",
                &self.failures,
            ),
            (
                "basalt_auth_logins_total",
                "Successful logins (HTTP: requests that carried credentials).",
                &self.logins,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for d in [Door::Http, Door::IlpTcp, Door::Pg] {
                let n = counts[Self::slot(d)].load(Ordering::Relaxed);
                let _ = writeln!(s, "{name}{{protocol=\"{}\"}} {n}", d.name());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
