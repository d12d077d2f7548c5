//! The compiled route table: which route a request matches, first match wins. Pure.
//!
//! Patterns have literal segments, `{name}` or `*` for exactly one segment, and a trailing
//! `**` for zero or more. Routes are compiled into a segment trie, so a lookup walks the
//! path's depth, not the route list: 10,000 routes cost about what 10 do. Every branch
//! that could hold an earlier route is still visited (literal, then one-segment, then
//! `**`), and subtrees whose earliest route is later than the best match so far are skipped,
//! which keeps "first match wins" exact.

use crate::ability::Ability;
use crate::path::CheckedPath;
use foldhash::HashMap;
use http::Method;
use serde::Deserialize;

/// Which credentials a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Public: no credential needed, no identity sent.
    None,
    /// A token or a session.
    #[default]
    Any,
    /// A bearer token only (cookies are ignored).
    Token,
    /// A cookie session only.
    Session,
}

/// One route of the table, as the config declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in the config's `routes:` list (0-based).
    pub index: usize,
    /// The pattern as written; also the route's label in logs and metrics.
    pub pattern: Box<str>,
    /// `None`: every method.
    pub methods: Option<Box<[Method]>>,
    pub auth: AuthMode,
    /// Every one of these is required (Sanctum's `abilities` middleware).
    pub all_of: Box<[Ability]>,
    /// At least one of these, when not empty (Sanctum's `ability` middleware).
    pub any_of: Box<[Ability]>,
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Whether a request under `other` must show exactly what this route asks for: the
    /// same credentials and abilities (the patterns and methods may differ).
    pub fn same_requirements(&self, other: &Route) -> bool {
        fn set(abilities: &[Ability]) -> Vec<&str> {
            let mut sorted: Vec<&str> = abilities.iter().map(Ability::as_str).collect();
            sorted.sort_unstable();
            sorted.dedup();
            sorted
        }
        self.auth == other.auth
            && set(&self.all_of) == set(&other.all_of)
            && set(&self.any_of) == set(&other.any_of)
    }
}

/// A parsed pattern segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}` or `*`.
    One,
    /// `**`, last only.
    Rest,
}

/// Parses a route pattern, or says what is wrong with it.
pub fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(body) = pattern.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = body.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match *part {
            "" => return Err("has an empty segment ('//')".into()),
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => return Err("'**' may only be the last segment".into()),
            "*" => Segment::One,
            "." | ".." => return Err("has a dot segment".into()),
            p if p.starts_with('{') && p.ends_with('}') => {
                let name = &p[1..p.len() - 1];
                let mut chars = name.chars();
                let valid = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("parameter '{p}' needs a name like {{id}}"));
                }
                Segment::One
            }
            p if p.contains(['{', '}', '*', '%', '\\']) => {
                return Err(format!(
                    "segment '{p}' mixes a literal with '{{', '}}', '*', '%' or '\\\\'; write a whole segment as {{name}}, * or **"
                ));
            }
            p => Segment::Literal(p.to_owned()),
        };
        out.push(segment);
    }
    Ok(out)
}

#[derive(Debug, Default, Clone)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    one: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here, ascending.
    ends: Vec<usize>,
    /// Routes whose pattern ends with `**` here, ascending.
    rests: Vec<usize>,
    /// The earliest route anywhere in this subtree.
    min: usize,
}

impl Node {
    fn seal(&mut self) -> usize {
        let mut min = usize::MAX;
        min = min.min(self.ends.first().copied().unwrap_or(usize::MAX));
        min = min.min(self.rests.first().copied().unwrap_or(usize::MAX));
        for child in self.literals.values_mut() {
            min = min.min(child.seal());
        }
        if let Some(child) = &mut self.one {
            min = min.min(child.seal());
        }
        self.min = min;
        min
    }
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    root: Node,
    /// The same trie with its literals in lower case, to match a path read case-folded.
    folded: Node,
    /// Every method some route names, and one none does: the methods whose routes can
    /// differ for one path.
    methods: Vec<Method>,
    /// Some pattern has a literal with upper case letters: a path in lower case may match
    /// it case-folded.
    upper_case: bool,
}

impl RouteTable {
    /// Builds the table, parsing each route's pattern; the first bad pattern is the error.
    /// (Config validation parses the patterns itself, reporting every bad one, and calls
    /// `from_parsed`.)
    pub fn new(routes: Vec<Route>) -> Result<Self, String> {
        let parsed = routes
            .into_iter()
            .map(|route| {
                let segments = parse_pattern(&route.pattern)
                    .map_err(|e| format!("route pattern {}: {e}", route.pattern))?;
                Ok((route, segments))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self::from_parsed(parsed))
    }

    /// Builds the table from routes and their patterns as `parse_pattern` returned them.
    pub fn from_parsed(parsed: Vec<(Route, Vec<Segment>)>) -> Self {
        let mut root = Node::default();
        let mut folded = Node::default();
        for (route, segments) in &parsed {
            insert(&mut root, route, segments, |lit| lit.into());
            insert(&mut folded, route, segments, |lit| {
                lit.to_lowercase().into()
            });
        }
        let routes: Vec<Route> = parsed.into_iter().map(|(route, _)| route).collect();
        root.seal();
        folded.seal();
        let mut methods: Vec<Method> = routes
            .iter()
            .flat_map(|r| r.methods.iter().flatten().cloned())
            .collect();
        methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        methods.dedup();
        if !methods.is_empty() {
            let unnamed = Method::from_bytes(b"TOKENGATE-UNNAMED").expect("a valid method");
            methods.push(unnamed);
        }
        let upper_case = routes
            .iter()
            .any(|r| r.pattern.chars().any(char::is_uppercase));
        Self {
            routes,
            root,
            folded,
            methods,
            upper_case,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route (in config order) matching this method and path.
    pub fn find(&self, method: &Method, path: &CheckedPath<'_>) -> Option<&Route> {
        let mut best = usize::MAX;
        self.walk(&self.root, path.segments(), method, &mut best);
        self.routes.get(best)
    }

    /// The first route matching this method and a path read as `segments`; `folded`: the
    /// segments are in lower case and the patterns' literals are taken in lower case too.
    pub fn find_read(&self, method: &Method, segments: &[String], folded: bool) -> Option<&Route> {
        let mut best = usize::MAX;
        let root = if folded { &self.folded } else { &self.root };
        self.walk(root, segments.iter().map(String::as_str), method, &mut best);
        self.routes.get(best)
    }

    /// Whether some pattern holds upper case letters (so that any path may match a route
    /// differently when case is ignored).
    pub fn has_upper_case(&self) -> bool {
        self.upper_case
    }

    /// Whether the requirements for `path` depend on the request's method: some route
    /// that names methods matches it for one method and not for another.
    pub fn depends_on_method(&self, path: &CheckedPath<'_>) -> bool {
        self.differ(self.methods.iter().map(|m| self.find(m, path)))
    }

    /// `depends_on_method` for a path read as `segments` (`find_read`).
    pub fn depends_on_method_read(&self, segments: &[String], folded: bool) -> bool {
        self.differ(
            self.methods
                .iter()
                .map(|m| self.find_read(m, segments, folded)),
        )
    }

    /// Whether the routes found differ in their requirements.
    fn differ<'r>(&self, mut requirements: impl Iterator<Item = Option<&'r Route>>) -> bool {
        let Some(first) = requirements.next() else {
            return false;
        };
        requirements.any(|other| match (first, other) {
            (Some(a), Some(b)) => !a.same_requirements(b),
            (a, b) => a.is_some() != b.is_some(),
        })
    }

    fn walk<'p>(
        &self,
        node: &Node,
        mut rest: impl Iterator<Item = &'p str> + Clone,
        method: &Method,
        best: &mut usize,
    ) {
        if node.min >= *best {
            return;
        }
        self.earliest(&node.rests, method, best);
        match rest.next() {
            None => self.earliest(&node.ends, method, best),
            Some(segment) => {
                if let Some(child) = node.literals.get(segment) {
                    self.walk(child, rest.clone(), method, best);
                }
                if let Some(child) = &node.one {
                    self.walk(child, rest, method, best);
                }
            }
        }
    }

    fn earliest(&self, candidates: &[usize], method: &Method, best: &mut usize) {
        for &index in candidates {
            if index >= *best {
                return;
            }
            if self.routes[index].allows(method) {
                *best = index;
                return;
            }
        }
    }
}

/// Adds `route` to the trie at `root`, its literals as `literal` makes them.
fn insert(
    root: &mut Node,
    route: &Route,
    segments: &[Segment],
    literal: impl Fn(&str) -> Box<str>,
) {
    let mut node = root;
    for segment in segments {
        match segment {
            Segment::Literal(lit) => node = node.literals.entry(literal(lit)).or_default(),
            Segment::One => node = node.one.get_or_insert_with(Default::default),
            Segment::Rest => {
                node.rests.push(route.index);
                return;
            }
        }
    }
    node.ends.push(route.index);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path;

    fn route(index: usize, pattern: &str, methods: Option<&[Method]>) -> Route {
        Route {
            index,
            pattern: pattern.into(),
            methods: methods.map(|m| m.to_vec().into()),
            auth: AuthMode::Any,
            all_of: Box::new([]),
            any_of: Box::new([]),
        }
    }

    fn table(patterns: &[(&str, Option<&[Method]>)]) -> RouteTable {
        RouteTable::new(
            patterns
                .iter()
                .enumerate()
                .map(|(i, (p, m))| route(i, p, *m))
                .collect(),
        )
        .unwrap()
    }

    fn find(t: &RouteTable, method: Method, raw: &str) -> Option<String> {
        let path = path::check(raw).unwrap();
        t.find(&method, &path).map(|r| r.pattern.to_string())
    }

    /// The obvious linear scan, the reference the trie must agree with.
    fn linear(
        patterns: &[(&str, Option<&[Method]>)],
        method: &Method,
        raw: &str,
    ) -> Option<String> {
        let path = path::check(raw).unwrap();
        let segs: Vec<&str> = path.segments().collect();
        patterns.iter().find_map(|(p, m)| {
            if m.is_some_and(|m| !m.contains(method)) {
                return None;
            }
            let pat = parse_pattern(p).unwrap();
            let matches = {
                let mut i = 0;
                let mut ok = true;
                let mut rest = false;
                for s in &pat {
                    match s {
                        Segment::Rest => {
                            rest = true;
                            break;
                        }
                        Segment::One => ok &= i < segs.len(),
                        Segment::Literal(l) => ok &= segs.get(i) == Some(&l.as_str()),
                    }
                    i += 1;
                }
                ok && (rest || i == segs.len())
            };
            matches.then(|| p.to_string())
        })
    }

    const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
    const POST: &[Method] = &[Method::POST];

    #[test]
    fn first_match_wins_across_branches() {
        let patterns: &[(&str, Option<&[Method]>)] = &[
            ("/healthz", None),
            ("/api/posts/{id}", Some(GET_HEAD)),
            ("/api/posts/*", Some(POST)),
            ("/api/reports/**", None),
            ("/api/posts/new", None),
            ("/app/**", None),
            ("/**", None),
        ];
        let t = table(patterns);
        let cases: &[(Method, &str, &str)] = &[
            (Method::GET, "/healthz", "/healthz"),
            (Method::GET, "/healthz/", "/healthz"),
            (Method::GET, "/healthz/x", "/**"),
            (Method::GET, "/api/posts/7", "/api/posts/{id}"),
            (Method::HEAD, "/api/posts/7", "/api/posts/{id}"),
            (Method::POST, "/api/posts/7", "/api/posts/*"),
            (Method::DELETE, "/api/posts/7", "/**"),
            // the earlier `{id}` route wins over the later literal `new`
            (Method::GET, "/api/posts/new", "/api/posts/{id}"),
            (Method::PUT, "/api/posts/new", "/api/posts/new"),
            (Method::GET, "/api/reports", "/api/reports/**"),
            (Method::GET, "/api/reports/2024/q1", "/api/reports/**"),
            (Method::GET, "/app", "/app/**"),
            (Method::GET, "/%61pp/x", "/app/**"),
            (Method::GET, "/", "/**"),
            (Method::GET, "/API/posts/7", "/**"),
        ];
        for (m, p, want) in cases {
            assert_eq!(find(&t, m.clone(), p).as_deref(), Some(*want), "{m} {p}");
            assert_eq!(
                linear(patterns, m, p).as_deref(),
                Some(*want),
                "linear {m} {p}"
            );
        }
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[("/a", None), ("/b/{x}", Some(POST))]);
        assert_eq!(find(&t, Method::GET, "/c"), None);
        assert_eq!(find(&t, Method::GET, "/b/1"), None);
        assert_eq!(find(&t, Method::GET, "/a/b"), None);
        assert_eq!(find(&t, Method::GET, "/"), None);
    }

    #[test]
    fn root_pattern_matches_only_root() {
        let t = table(&[("/", None)]);
        assert_eq!(find(&t, Method::GET, "/").as_deref(), Some("/"));
        assert_eq!(find(&t, Method::GET, "/x"), None);
    }

    #[test]
    fn pattern_errors() {
        for (p, msg) in [
            ("api", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("/**/a", "'**' may only be the last"),
            ("/a/{}", "needs a name"),
            ("/a/{1x}", "needs a name"),
            ("/a/x{id}", "mixes a literal"),
            ("/a/%41", "mixes a literal"),
            ("/a/../b", "dot segment"),
        ] {
            let err = parse_pattern(p).unwrap_err();
            assert!(err.contains(msg), "{p}: {err}");
        }
        assert_eq!(
            parse_pattern("/a/{id}/*/**").unwrap(),
            vec![
                Segment::Literal("a".into()),
                Segment::One,
                Segment::One,
                Segment::Rest
            ]
        );
    }

    #[test]
    fn many_routes_still_find_the_right_one() {
        let mut patterns: Vec<(String, Option<&[Method]>)> = (0..10_000)
            .map(|i| (format!("/other{i}/**"), None))
            .collect();
        patterns.push(("/bench/**".into(), None));
        let owned: Vec<(&str, Option<&[Method]>)> =
            patterns.iter().map(|(p, m)| (p.as_str(), *m)).collect();
        let t = table(&owned);
        assert_eq!(
            find(&t, Method::GET, "/bench/item").as_deref(),
            Some("/bench/**")
        );
        assert_eq!(
            find(&t, Method::GET, "/other9999/x").as_deref(),
            Some("/other9999/**")
        );
        assert_eq!(find(&t, Method::GET, "/nothing"), None);
    }

    proptest::proptest! {
        /// The trie agrees with a linear first-match scan on random tables and paths.
        #[test]
        fn trie_agrees_with_linear_scan(
            pats in proptest::collection::vec("(/(a|b|\\{x\\}|\\*)){0,3}(/\\*\\*)?", 1..12),
            methods in proptest::collection::vec(0u8..3, 12),
            path in "(/(a|b|c)){0,4}",
            method in 0u8..2,
        ) {
            let ms: [Option<&[Method]>; 3] = [None, Some(GET_HEAD), Some(POST)];
            let patterns: Vec<(String, Option<&[Method]>)> = pats
                .iter()
                .enumerate()
                .map(|(i, p)| (if p.is_empty() { "/".to_string() } else { p.clone() }, ms[methods[i] as usize]))
                .collect();
            let owned: Vec<(&str, Option<&[Method]>)> = patterns.iter().map(|(p, m)| (p.as_str(), *m)).collect();
            let t = table(&owned);
            let path = if path.is_empty() { "/".to_string() } else { path };
            let m = if method == 0 { Method::GET } else { Method::POST };
            proptest::prop_assert_eq!(find(&t, m.clone(), &path), linear(&owned, &m, &path));
        }
    }
}
