//! Reading the service's Prometheus text.

/// A Prometheus histogram in `metrics` as "mean X ms, p50 <= Y ms, p99 <= Z ms"
/// (quantiles as the upper bound of their bucket).
pub fn histogram_summary(metrics: &str, name: &str) -> String {
    histogram_summary_between("", metrics, name)
}

/// [`histogram_summary`] of what was observed between the scrapes `before`
/// and `after`.
pub fn histogram_summary_between(before: &str, after: &str, name: &str) -> String {
    let Some((sum, count, buckets)) = histogram(after, name) else { return format!("{name}: absent") };
    let (sum_before, count_before, buckets_before) = histogram(before, name).unwrap_or_default();
    let (sum, count) = (sum - sum_before, count - count_before);
    let buckets: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(le, n)| (le, n - buckets_before.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, n)| *n)))
        .collect();
    let quantile = |q: f64| {
        buckets.iter().find(|(_, cumulative)| *cumulative >= q * count).map_or(f64::INFINITY, |(le, _)| *le) * 1000.0
    };
    format!(
        "{name}: {count} observed, mean {:.1} ms, p50 <= {} ms, p99 <= {} ms",
        sum / count.max(1.0) * 1000.0,
        quantile(0.5),
        quantile(0.99)
    )
}

/// A histogram's cumulative buckets: (upper bound, count).
type Buckets = Vec<(f64, f64)>;

/// A histogram's sum, count and buckets.
fn histogram(metrics: &str, name: &str) -> Option<(f64, f64, Buckets)> {
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let find = |suffix: &str| metrics.lines().find(|l| l.starts_with(&format!("{name}{suffix} "))).map(value);
    let buckets = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, _) = rest.split_once('"')?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), value(rest)))
        })
        .collect();
    Some((find("_sum")?, find("_count")?, buckets))
}
