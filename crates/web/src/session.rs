//! Whose request this is. The view holds no accounts: it forwards the caller's bearer token to
//! the server with every call, and the server authenticates and authorizes it as it does the
//! CLI's. The token comes from `Authorization: Bearer`, from an authenticating proxy's header,
//! or from the sign-in cookie (the token pasted once into `/signin`: `HttpOnly`,
//! `SameSite=Strict`, `Secure`). Without any, calls go out without one, which a server run with
//! `--auth none` accepts and any other refuses (the pages then send people to `/signin`).
//!
//! Every form carries a CSRF token: an HMAC of the caller's token under this process's key, so
//! a page of another site can neither read nor forge it.

use axum::http::{HeaderMap, HeaderValue, header};
use ring::hmac;
use tonic::metadata::MetadataValue;

/// The sign-in cookie's name.
pub const COOKIE: &str = "stagetime_token";
/// How long the sign-in cookie lasts.
const COOKIE_MAX_AGE_SECONDS: u64 = 8 * 3600;
/// Longest token accepted (the server's limit).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A random signing key.
pub fn random_key() -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no random key: {e}"))?;
    Ok(key)
}

/// Reads callers' tokens and signs their CSRF tokens.
#[derive(Clone)]
pub struct Sessions {
    key: hmac::Key,
    token_header: axum::http::HeaderName,
    secure_cookie: bool,
}

/// One request's caller.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    token: Option<String>,
    /// The CSRF token its forms carry.
    pub csrf: String,
}

impl Caller {
    /// Whether the request carried a token.
    pub fn signed_in(&self) -> bool {
        self.token.is_some()
    }

    /// `request` carrying this caller's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = MetadataValue::try_from(format!("Bearer {token}"))
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

impl Sessions {
    /// Sessions signing with `key`, reading tokens also from `token_header`.
    pub fn new(key: &[u8], token_header: &str, secure_cookie: bool) -> anyhow::Result<Self> {
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            token_header: token_header.parse()?,
            secure_cookie,
        })
    }

    /// The caller of a request with `headers`.
    pub fn caller(&self, headers: &HeaderMap) -> Caller {
        let token = bearer(headers)
            .or_else(|| text(headers.get(&self.token_header)))
            .or_else(|| cookie(headers, COOKIE))
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES && is_token_text(t));
        let csrf = self.csrf_for(token.as_deref());
        Caller { token, csrf }
    }

    fn csrf_for(&self, token: Option<&str>) -> String {
        let tag = hmac::sign(
            &self.key,
            format!("csrf:{}", token.unwrap_or("")).as_bytes(),
        );
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether a form's `csrf` field belongs to `caller`, and the request is not a cross-site
    /// one (`Sec-Fetch-Site`, where the browser sends it).
    pub fn form_is_genuine(&self, caller: &Caller, headers: &HeaderMap, csrf: &str) -> bool {
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site");
        let expected = self.csrf_for(caller.token.as_deref());
        !cross_site && same(expected.as_bytes(), csrf.as_bytes())
    }

    /// The `Set-Cookie` value that signs in with `token`; `None` for a token that cannot be one.
    pub fn sign_in_cookie(&self, token: &str) -> Option<HeaderValue> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !is_token_text(token) {
            return None;
        }
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECONDS}{secure}"
        ))
        .ok()
    }

    /// The `Set-Cookie` value that signs out.
    pub fn sign_out_cookie(&self) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
        ))
        .unwrap_or(HeaderValue::from_static(""))
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Tokens are printable ASCII without spaces, `;` or `,` (JWTs, ServiceAccount tokens and
/// static tokens all are): nothing that could break a header or a cookie.
fn is_token_text(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
}

fn text(value: Option<&HeaderValue>) -> Option<String> {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = text(headers.get(header::AUTHORIZATION))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(|t| t.trim().to_string())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn sessions() -> Sessions {
        Sessions::new(&[7; 32], "x-forwarded-access-token", true).unwrap()
    }

    #[test]
    fn tokens_come_from_the_header_the_proxy_or_the_cookie() {
        let s = sessions();
        let from = |h: &[(&str, &str)]| s.caller(&headers(h)).token;
        assert_eq!(
            from(&[("authorization", "Bearer a.b.c")]).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            from(&[("x-forwarded-access-token", "p1")]).as_deref(),
            Some("p1")
        );
        assert_eq!(
            from(&[("cookie", "theme=dark; stagetime_token=c1")]).as_deref(),
            Some("c1")
        );
        assert_eq!(from(&[("cookie", "x=1")]), None);
        assert_eq!(from(&[("authorization", "Basic Zm9v")]), None);
    }

    #[test]
    fn csrf_tokens_belong_to_one_caller_and_one_site() {
        let s = sessions();
        let alice = s.caller(&headers(&[("authorization", "Bearer alice-token")]));
        let bob = s.caller(&headers(&[("authorization", "Bearer bob-token")]));
        assert_ne!(alice.csrf, bob.csrf);
        let same_origin = headers(&[("sec-fetch-site", "same-origin")]);
        assert!(s.form_is_genuine(&alice, &same_origin, &alice.csrf));
        assert!(!s.form_is_genuine(&alice, &same_origin, &bob.csrf));
        assert!(!s.form_is_genuine(&alice, &same_origin, ""));
        let cross = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(!s.form_is_genuine(&alice, &cross, &alice.csrf));
        let other_key = Sessions::new(&[8; 32], "x", true).unwrap();
        assert!(!other_key.form_is_genuine(&alice, &same_origin, &alice.csrf));
    }

    #[test]
    fn cookies_are_strict_and_refuse_header_breaking_tokens() {
        let s = sessions();
        let cookie = s.sign_in_cookie("tok-1").unwrap();
        let text = cookie.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(text.contains(part), "{text}");
        }
        assert!(s.sign_in_cookie("a;b").is_none());
        assert!(s.sign_in_cookie("a b").is_none());
        assert!(s.sign_in_cookie("").is_none());
        assert!(s.sign_in_cookie(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }
}
