//! Reading a Prometheus text exposition: one series' value, or the sum of
//! a metric's series that carry some labels.

/// The value of one series in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The sum of every series of metric `name` whose labels include all of
/// `labels` (`[("kind", "timeout")]`), in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let labelled = series.is_empty() || series.starts_with('{');
            let matches = labels
                .iter()
                .all(|(key, value)| series.contains(&format!("{key}=\"{value}\"")));
            (labelled && matches).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
