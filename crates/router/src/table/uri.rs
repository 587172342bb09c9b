//! Parsing of one `uris` entry into the shape the route table indexes it by.
//!
//! APISIX (lua-resty-radixtree) reads a uri as:
//! - `/a/b`: exact;
//! - `/api/*`, `/api*`: prefix, a trailing `*` standing for any rest (possibly empty) of
//!   the path, so `/api/*` matches `/api/` and `/api/x/y` but not `/api`;
//! - `/files/*path`: prefix whose rest is captured as the parameter `path`;
//! - `/users/:id`: a segment parameter matching one non-empty segment.
//!
//! In a uri with `:name` segments a `*` must be a whole segment (`/u/:id/*`, `/u/:id/*rest`).

/// One path segment of a parameterised uri.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    Param(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UriPattern {
    Exact,
    Prefix {
        /// Bytes of the uri before the `*`.
        len: usize,
        capture: Option<Box<str>>,
    },
    Params {
        /// Bytes of the uri before the first `:`; orders patterns by how much literal text
        /// they pin down before anything varies.
        static_len: usize,
        segments: Vec<Segment>,
        /// `Some` when the uri ends in `*` (anonymous, `None` inside) or `*name`.
        catch_all: Option<Option<Box<str>>>,
    },
}

pub(crate) fn parse(uri: &str) -> Result<UriPattern, String> {
    if !uri.starts_with('/') {
        return Err(format!("\"{uri}\" must start with '/'"));
    }
    let raw: Vec<&str> = uri[1..].split('/').collect();
    let last = raw.len() - 1;
    let mut segments = Vec::with_capacity(raw.len());
    let mut catch_all = None;
    let mut bare_star = false;
    let mut first_param_at = None;
    let mut offset = 1;
    for (i, seg) in raw.iter().enumerate() {
        if let Some(name) = seg.strip_prefix(':') {
            check_name(uri, name)?;
            if segments
                .iter()
                .any(|s| matches!(s, Segment::Param(n) if **n == *name))
            {
                return Err(format!("\"{uri}\" names the parameter \"{name}\" twice"));
            }
            first_param_at.get_or_insert(offset);
            segments.push(Segment::Param(name.into()));
        } else if let Some(star) = seg.find('*') {
            if i != last {
                return Err(format!(
                    "\"{uri}\": '*' is only allowed in the last segment"
                ));
            }
            if star == 0 {
                let name = &seg[1..];
                if name.is_empty() {
                    catch_all = Some(None);
                } else {
                    check_name(uri, name)?;
                    catch_all = Some(Some(name.into()));
                }
            } else if star == seg.len() - 1 {
                bare_star = true;
            } else {
                return Err(format!(
                    "\"{uri}\": '*' must end the uri, or start its last segment as in /files/*path"
                ));
            }
        } else {
            segments.push(Segment::Literal((*seg).into()));
        }
        offset += seg.len() + 1;
    }
    if let Some(Some(name)) = &catch_all {
        if segments
            .iter()
            .any(|s| matches!(s, Segment::Param(n) if n == name))
        {
            return Err(format!("\"{uri}\" names the parameter \"{name}\" twice"));
        }
    }
    match first_param_at {
        None if bare_star || catch_all.is_some() => {
            let star = uri.rfind('*').unwrap_or(uri.len());
            Ok(UriPattern::Prefix {
                len: star,
                capture: catch_all.flatten(),
            })
        }
        None => Ok(UriPattern::Exact),
        Some(_) if bare_star => Err(format!(
            "\"{uri}\": in a uri with :parameters '*' must be a whole segment, as in /u/:id/*"
        )),
        Some(static_len) => Ok(UriPattern::Params {
            static_len,
            segments,
            catch_all,
        }),
    }
}

fn check_name(uri: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("\"{uri}\" has a parameter without a name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "\"{uri}\": parameter name \"{name}\" may only use letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// The parameters of a parameterised pattern that is known to match `path`.
pub(crate) fn extract_params<'a>(
    segments: &'a [Segment],
    catch_all: &'a Option<Option<Box<str>>>,
    path: &'a str,
    out: &mut Vec<(&'a str, &'a str)>,
) {
    let mut rest = path.get(1..).unwrap_or("");
    for segment in segments {
        let (value, after) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        if let Segment::Param(name) = segment {
            out.push((name, value));
        }
        rest = after;
    }
    if let Some(Some(name)) = catch_all {
        out.push((name, rest));
    }
}
