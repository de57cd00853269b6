//! Lists sorted by a window's figure: "top by 24h volume", "biggest 1h
//! movers". Each instance ranks every token (pair) from their stats, and
//! ranks again when its ranking is older than `SWAPSTREAM_RANK_MAX_AGE_MS`,
//! or than [`BUILD_SHARE`] times its build took if that is longer (so
//! building takes at most a fifth of the time however many keys there
//! are): the order is that old at most, the stats on each page are current.
//!
//! A page after a cursor starts after the cursor's (figure, name) in the
//! ranking, so pages of one ranking neither skip nor repeat; across a new
//! ranking a key whose figure moved may (as on any leaderboard).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::Arbiter;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use serde::Deserialize;

use super::{Live, ReadError};
use crate::domain::partial::AggKey;
use crate::domain::window::WINDOWS;

/// What a list can be sorted by: a figure of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sort {
    figure: Figure,
    /// Index into [`WINDOWS`].
    window: usize,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Figure {
    Volume,
    Swaps,
    PriceChange,
    Makers,
}

const FIGURES: [(&str, Figure); 4] = [
    ("volume", Figure::Volume),
    ("swaps", Figure::Swaps),
    ("price_change", Figure::PriceChange),
    ("makers", Figure::Makers),
];

impl Sort {
    /// Every `sort` value: `<figure>_<window>`, e.g. `volume_24h`.
    pub fn names() -> Vec<String> {
        FIGURES.iter().flat_map(|(f, _)| WINDOWS.iter().map(move |(w, _)| format!("{f}_{w}"))).collect()
    }

    /// `sort` as [`Sort::names`] gives them.
    pub fn parse(sort: &str, descending: bool) -> Result<Sort, String> {
        let parsed = FIGURES.iter().find_map(|(name, figure)| {
            let window = sort.strip_prefix(name)?.strip_prefix('_')?;
            Some(Sort { figure: *figure, window: WINDOWS.iter().position(|(w, _)| *w == window)?, descending })
        });
        parsed.ok_or_else(|| format!("expected one of {}, got {sort:?}", Sort::names().join(", ")))
    }

    fn slot(self) -> usize {
        self.window * FIGURES.len() + FIGURES.iter().position(|(_, f)| *f == self.figure).expect("a figure")
    }

    /// Entry order: by figure (most first when descending), keys without
    /// one last, then by name.
    fn compare(self, a: (Option<f64>, &str), b: (Option<f64>, &str)) -> Ordering {
        let by_figure = match (a.0, b.0) {
            (Some(x), Some(y)) if self.descending => y.total_cmp(&x),
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_figure.then_with(|| a.1.cmp(b.1))
    }
}

/// Where a sorted page ended: the figure and name of its last key, written
/// `<16 hex digits of the figure's bits>.<name>` (`n.<name>` without a
/// figure). Any other text is a name, which stands for its figure in the
/// current ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct RankCursor {
    figure: Option<Option<f64>>,
    name: String,
}

impl RankCursor {
    pub fn parse(text: &str) -> RankCursor {
        let figure = text.split_once('.').and_then(|(figure, name)| {
            let value = match figure {
                "n" => None,
                hex if hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
                    Some(f64::from_bits(u64::from_str_radix(hex, 16).ok()?)).filter(|v| !v.is_nan())
                }
                _ => return None,
            };
            Some((value, name))
        });
        match figure {
            Some((value, name)) if !name.is_empty() => {
                RankCursor { figure: Some(value), name: name.to_ascii_uppercase() }
            }
            _ => RankCursor { figure: None, name: text.to_ascii_uppercase() },
        }
    }

    fn write(figure: Option<f64>, name: &str) -> String {
        match figure {
            Some(value) => format!("{:016x}.{name}", value.to_bits()),
            None => format!("n.{name}"),
        }
    }
}

/// Every key of one kind with its figures, and the orders asked for so far.
pub(super) struct Ranking {
    built: Instant,
    /// How long building it took.
    took: Duration,
    entries: Vec<Entry>,
    orders: Mutex<HashMap<Sort, Arc<Vec<u32>>>>,
}

struct Entry {
    key: AggKey,
    name: String,
    /// By [`Sort::slot`].
    figures: [Option<f64>; FIGURES.len() * WINDOWS.len()],
}

impl Ranking {
    fn order(&self, sort: Sort) -> Arc<Vec<u32>> {
        let mut orders = self.orders.lock().expect("orders lock");
        let order = orders.entry(sort).or_insert_with(|| {
            let slot = sort.slot();
            let mut order: Vec<u32> = (0..self.entries.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| {
                let (a, b) = (&self.entries[a as usize], &self.entries[b as usize]);
                sort.compare((a.figures[slot], &a.name), (b.figures[slot], &b.name))
            });
            Arc::new(order)
        });
        order.clone()
    }

    /// The keys after `cursor` whose name starts with `prefix`, at most
    /// `limit`, and the next page's cursor when there are more.
    fn page(
        &self,
        sort: Sort,
        prefix: &str,
        cursor: Option<&RankCursor>,
        limit: usize,
    ) -> (Vec<AggKey>, Option<String>) {
        let slot = sort.slot();
        let order = self.order(sort);
        let start = match cursor {
            None => 0,
            Some(cursor) => {
                let figure = match cursor.figure {
                    Some(figure) => Some(figure),
                    None => self.entries.iter().find(|e| e.name == cursor.name).map(|e| e.figures[slot]),
                };
                // A name not ranked: past the end.
                let Some(figure) = figure else { return (Vec::new(), None) };
                order.partition_point(|&i| {
                    let e = &self.entries[i as usize];
                    sort.compare((e.figures[slot], &e.name), (figure, &cursor.name)) != Ordering::Greater
                })
            }
        };
        let mut matching =
            order[start..].iter().map(|&i| &self.entries[i as usize]).filter(|e| e.name.starts_with(prefix));
        let page: Vec<&Entry> = matching.by_ref().take(limit).collect();
        let next =
            page.last().filter(|_| matching.next().is_some()).map(|e| RankCursor::write(e.figures[slot], &e.name));
        (page.into_iter().map(|e| e.key.clone()).collect(), next)
    }
}

/// The rankings of tokens and of pairs, the building of each, and the
/// thread they are built on (so a build never holds up a request worker).
#[derive(Default)]
pub(super) struct Rankings {
    kinds: Mutex<[Kind; 2]>,
    builder: OnceLock<Arbiter>,
}

#[derive(Default)]
struct Kind {
    current: Option<Arc<Ranking>>,
    building: Option<Building>,
}

type Building = Shared<BoxFuture<'static, Result<Arc<Ranking>, ReadError>>>;

/// How long a request waits for the first ranking of a kind before its
/// 503 (the build goes on; a retry finds it).
const FIRST_RANKING_WAIT: Duration = Duration::from_secs(2);

/// The figures a ranking reads from a stats body.
#[derive(Deserialize)]
struct Figures {
    windows: HashMap<String, WindowFigures>,
}

#[derive(Deserialize)]
struct WindowFigures {
    volume_usd: String,
    swaps: u64,
    price_change_pct: Option<String>,
    #[serde(default)]
    makers: u64,
}

impl Live {
    /// One page of tokens (else pairs) sorted by `sort` (see the module).
    pub async fn sorted_page(
        &self,
        tokens: bool,
        sort: Sort,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AggKey>, Option<String>), ReadError> {
        let ranking = self.ranking(tokens).await?;
        let cursor = cursor.map(RankCursor::parse);
        Ok(ranking.page(sort, prefix, cursor.as_ref(), limit))
    }

    /// The ranking, built again in the background when older than the
    /// configured age, while requests use the old one. Only the first
    /// requests of a kind wait for one, [`FIRST_RANKING_WAIT`] at most.
    async fn ranking(&self, tokens: bool) -> Result<Arc<Ranking>, ReadError> {
        let kind = usize::from(!tokens);
        let (current, building) = {
            let mut kinds = self.rankings.kinds.lock().expect("rankings lock");
            let state = &mut kinds[kind];
            let max_age = |r: &Ranking| self.rank_max_age.max(r.took * BUILD_SHARE);
            if let Some(fresh) = state.current.as_ref().filter(|r| r.built.elapsed() < max_age(r)) {
                return Ok(fresh.clone());
            }
            let building = state.building.get_or_insert_with(|| self.build_ranking(tokens)).clone();
            (state.current.clone(), building)
        };
        match current {
            Some(stale) => Ok(stale),
            None => tokio::time::timeout(FIRST_RANKING_WAIT, building).await.unwrap_or_else(|_| {
                Err(ReadError::Unavailable {
                    dependency: "ranking",
                    detail: "the first ranking of every key is being built; retry in a moment".into(),
                })
            }),
        }
    }

    /// Starts building a ranking; it runs to its end whoever waits for it,
    /// and replaces the current one when it succeeds.
    fn build_ranking(&self, tokens: bool) -> Building {
        let live = self.clone();
        let build = async move {
            let result = live.rank_every_key(tokens).await;
            let mut kinds = live.rankings.kinds.lock().expect("rankings lock");
            let state = &mut kinds[usize::from(!tokens)];
            state.building = None;
            if let Ok(ranking) = &result {
                state.current = Some(ranking.clone());
            }
            result
        };
        let build = build.boxed().shared();
        self.rankings.builder.get_or_init(Arbiter::new).spawn(build.clone().map(drop));
        build
    }

    async fn rank_every_key(&self, tokens: bool) -> Result<Arc<Ranking>, ReadError> {
        let built = Instant::now();
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (keys, next) = self.page(tokens, "", cursor.as_deref(), RANK_CHUNK).await?;
            let bodies = self.page_stats(&keys).await?;
            for (key, body) in keys.into_iter().zip(bodies) {
                let figures: Figures = serde_json::from_slice(&body)
                    .map_err(|e| ReadError::redis(anyhow::anyhow!("a stats body without its windows: {e}")))?;
                entries.push(Entry { name: key.name(), key, figures: figures.slots() });
            }
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(Arc::new(Ranking { built, took: built.elapsed(), entries, orders: Mutex::default() }))
    }
}

/// A ranking is used for at least this many times as long as it took to
/// build.
const BUILD_SHARE: u32 = 5;

/// Keys read per step of a ranking's build.
const RANK_CHUNK: usize = 1000;

impl Figures {
    fn slots(&self) -> [Option<f64>; FIGURES.len() * WINDOWS.len()] {
        let mut slots = [None; FIGURES.len() * WINDOWS.len()];
        for (w, (label, _)) in WINDOWS.iter().enumerate() {
            let Some(window) = self.windows.get(*label) else { continue };
            for (f, (_, figure)) in FIGURES.iter().enumerate() {
                slots[w * FIGURES.len() + f] = match figure {
                    Figure::Volume => window.volume_usd.parse().ok(),
                    Figure::Swaps => Some(window.swaps as f64),
                    Figure::PriceChange => window.price_change_pct.as_deref().and_then(|p| p.parse().ok()),
                    Figure::Makers => Some(window.makers as f64),
                };
            }
        }
        slots
    }
}

/// How long a ranking is used before it is built again, by default.
pub const DEFAULT_RANK_MAX_AGE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(figures: &[(&str, Option<f64>)]) -> Ranking {
        let entries = figures
            .iter()
            .map(|(name, figure)| Entry {
                key: AggKey::named(true, name).unwrap(),
                name: name.to_string(),
                figures: [*figure; FIGURES.len() * WINDOWS.len()],
            })
            .collect();
        Ranking { built: Instant::now(), took: Duration::ZERO, entries, orders: Mutex::default() }
    }

    fn walk(ranking: &Ranking, sort: Sort, prefix: &str, limit: usize) -> Vec<String> {
        let (mut names, mut cursor) = (Vec::new(), None::<RankCursor>);
        loop {
            let (keys, next) = ranking.page(sort, prefix, cursor.as_ref(), limit);
            names.extend(keys.iter().map(AggKey::name));
            match next {
                Some(next) => cursor = Some(RankCursor::parse(&next)),
                None => return names,
            }
        }
    }

    #[test]
    fn sorts_are_a_figure_of_a_window() {
        let sort = Sort::parse("volume_24h", true).unwrap();
        assert_eq!((sort.figure, WINDOWS[sort.window].0, sort.descending), (Figure::Volume, "24h", true));
        assert_eq!(Sort::parse("price_change_5m", false).unwrap().figure, Figure::PriceChange);
        let names = Sort::names();
        assert_eq!(names.len(), 16);
        assert!(names.iter().all(|n| Sort::parse(n, true).is_ok()), "{names:?}");
        for bad in ["volume", "volume_2h", "price_24h", "makers_1h_"] {
            assert!(Sort::parse(bad, true).unwrap_err().contains("volume_24h"), "{bad}");
        }
    }

    #[test]
    fn pages_follow_the_ranking_without_skip_or_repeat_ties_by_name_and_none_last() {
        let mut figures: Vec<(String, Option<f64>)> =
            (0..250).map(|i| (format!("T{i:03}"), Some(f64::from(i % 7)))).collect();
        figures.push(("NOPRICE".into(), None));
        let named: Vec<(&str, Option<f64>)> = figures.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        let ranking = ranking(&named);
        for descending in [true, false] {
            let sort = Sort { figure: Figure::Volume, window: 3, descending };
            let walked = walk(&ranking, sort, "", 9);
            let mut expected = figures.clone();
            expected.sort_by(|a, b| sort.compare((a.1, &a.0), (b.1, &b.0)));
            let expected: Vec<String> = expected.into_iter().map(|(n, _)| n).collect();
            assert_eq!(walked, expected);
            assert_eq!(walked.last().map(String::as_str), Some("NOPRICE"), "without a figure: last either way");
            let first = figures.iter().find(|(n, _)| n == &walked[0]).unwrap().1.unwrap();
            assert_eq!(first, if descending { 6.0 } else { 0.0 });
        }
        let sort = Sort::parse("swaps_1h", true).unwrap();
        let t01: Vec<String> = walk(&ranking, sort, "T01", 3);
        assert_eq!(t01.len(), 10);
        assert!(t01.iter().all(|n| n.starts_with("T01")));
    }

    #[test]
    fn a_cursor_is_a_figure_and_a_name_or_a_name_that_stands_for_its_figure() {
        let ranking = ranking(&[("A", Some(3.0)), ("B", Some(2.0)), ("C", Some(1.0))]);
        let sort = Sort::parse("volume_5m", true).unwrap();
        let (first, next) = ranking.page(sort, "", None, 1);
        assert_eq!((first[0].name(), next.clone()), ("A".to_string(), Some(RankCursor::write(Some(3.0), "A"))));
        let after = |text: &str| ranking.page(sort, "", Some(&RankCursor::parse(text)), 5).0;
        assert_eq!(after(&next.unwrap()).len(), 2);
        assert_eq!(after("b").iter().map(AggKey::name).collect::<Vec<_>>(), ["C"]);
        assert!(after("UNKNOWN").is_empty(), "a name not ranked is past the end");
        // A figure between B's and C's: from C on, whatever the name.
        assert_eq!(after(&RankCursor::write(Some(1.5), "ZZZ")).iter().map(AggKey::name).collect::<Vec<_>>(), ["C"]);
        assert_eq!(RankCursor::parse("n.X"), RankCursor { figure: Some(None), name: "X".into() });
    }
}
