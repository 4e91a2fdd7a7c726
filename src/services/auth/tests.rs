//! Unit tests of tokens, scopes, prefixes and share links.
use super::*;

#[test]
fn scopes_parse_and_imply() {
    let s = Scopes::parse("read").unwrap_or(Scopes::NONE);
    assert!(s.allows(Scope::Read) && !s.allows(Scope::Write) && !s.allows(Scope::Admin));
    let s = Scopes::parse("write").unwrap_or(Scopes::NONE);
    assert!(!s.allows(Scope::Read) && s.allows(Scope::Write));
    let s = Scopes::parse("admin").unwrap_or(Scopes::NONE);
    assert!(s.allows(Scope::Read) && s.allows(Scope::Write) && s.allows(Scope::Admin));
    assert_eq!(
        Scopes::parse("write, read").map(Scopes::to_text).ok(),
        Some("read,write".to_string())
    );
    assert!(Scopes::parse("").is_err());
    assert!(Scopes::parse("root").is_err());
}

#[test]
fn prefixes_normalize_and_narrow() {
    assert_eq!(normalize_prefix("ci").ok(), Some("ci/".to_string()));
    assert_eq!(normalize_prefix("ci/").ok(), Some("ci/".to_string()));
    assert_eq!(normalize_prefix("").ok(), Some(String::new()));
    assert!(normalize_prefix("../x").is_err());
    assert!(normalize_prefix("/abs").is_err());
    assert!(normalize_prefix("/").is_err() && normalize_prefix("//").is_err());
    let p = Principal {
        token_id: None,
        scopes: Scopes::ALL,
        prefix: "ci/builds/".into(),
    };
    assert!(p.may_touch("ci/builds/a") && !p.may_touch("ci/buildsX/a") && !p.may_touch("ci"));
    assert_eq!(p.narrow("ci/builds/x"), Narrowed::Unchanged);
    assert_eq!(p.narrow(""), Narrowed::To("ci/builds/".into()));
    assert_eq!(p.narrow("ci/b"), Narrowed::To("ci/builds/".into()));
    assert_eq!(p.narrow("prod/"), Narrowed::Disjoint);
}

#[test]
fn token_strings_are_strict() {
    assert!(split_token("vfs_0123456789ab_abcdefghijklmnopqrstuvwxyz").is_some());
    for bad in [
        "",
        "vfs_",
        "vfs_0123456789ab",
        "vfs_0123456789ab_short",
        "vfs_0123456789aX_abcdefghijklmnopqrstuvwxyz",
        "xfs_0123456789ab_abcdefghijklmnopqrstuvwxyz",
        "vfs_0123456789ab_abcdefghijklmnopqrstuvwxyz\n",
        "vfs_0123456789ab_abcdefghijklmnop qrstuvwxyz",
    ] {
        assert!(split_token(bad).is_none(), "{bad:?}");
    }
}
