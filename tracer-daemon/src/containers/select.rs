//! Which running containers a selector picks, and the names closest to one that picks none.
use super::{Container, ContainerSelector};

/// The containers `selector` picks: by exact name if any has it, else by ID prefix, else
/// by part of a name; and of those, the ones carrying every label.
pub fn select<'a>(containers: &'a [Container], selector: &ContainerSelector) -> Vec<&'a Container> {
    let labelled = |container: &&Container| {
        selector
            .labels
            .iter()
            .all(|(key, value)| container.labels.get(key) == Some(value))
    };
    let Some(text) = &selector.container else {
        return containers.iter().filter(labelled).collect();
    };
    let by = |matches: &dyn Fn(&Container) -> bool| -> Vec<&'a Container> {
        containers
            .iter()
            .filter(|c| matches(c))
            .filter(labelled)
            .collect()
    };
    let exact = by(&|c| c.name == *text);
    if !exact.is_empty() {
        return exact;
    }
    let by_id = by(&|c| c.id.starts_with(text.as_str()));
    if !by_id.is_empty() {
        return by_id;
    }
    by(&|c| c.name.contains(text.as_str()))
}

/// Up to five running containers' names closest to `text`, closest first.
pub fn close_names(containers: &[Container], text: &str) -> Vec<String> {
    let mut names: Vec<(usize, &str)> = containers
        .iter()
        .map(|c| (strsim::levenshtein(&c.name, text), c.name.as_str()))
        .collect();
    names.sort();
    names
        .into_iter()
        .take(5)
        .map(|(_, name)| name.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn container(id: &str, name: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            image: "img".into(),
            labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
            pid: 1,
            cgroup_id: 1,
            cgroup_path: PathBuf::new(),
        }
    }

    fn selector(container: Option<&str>, labels: &[(&str, &str)]) -> ContainerSelector {
        ContainerSelector {
            container: container.map(str::to_owned),
            labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
        }
    }

    fn names(found: Vec<&Container>) -> Vec<&str> {
        found.into_iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn an_exact_name_wins_over_an_id_prefix_and_a_part_of_a_name() {
        let all = [
            container("abc123", "web", &[]),
            container("def456", "web-2", &[]),
            container("web999", "db", &[]),
        ];
        assert_eq!(names(select(&all, &selector(Some("web"), &[]))), ["web"]);
        assert_eq!(names(select(&all, &selector(Some("def"), &[]))), ["web-2"]);
        assert_eq!(names(select(&all, &selector(Some("eb-"), &[]))), ["web-2"]);
        assert!(select(&all, &selector(Some("cache"), &[])).is_empty());
    }

    #[test]
    fn labels_narrow_any_selection() {
        let all = [
            container("a1", "shop-web", &[("app", "shop"), ("tier", "web")]),
            container("a2", "shop-db", &[("app", "shop"), ("tier", "db")]),
            container("a3", "blog-web", &[("app", "blog"), ("tier", "web")]),
        ];
        assert_eq!(
            names(select(&all, &selector(None, &[("app", "shop")]))),
            ["shop-web", "shop-db"]
        );
        assert_eq!(
            names(select(&all, &selector(Some("web"), &[("app", "shop")]))),
            ["shop-web"]
        );
        assert!(select(&all, &selector(None, &[("app", "none")])).is_empty());
    }

    #[test]
    fn close_names_come_closest_first() {
        let all = [
            container("1", "payments", &[]),
            container("2", "web", &[]),
            container("3", "webs", &[]),
        ];
        assert_eq!(close_names(&all, "wbe"), ["web", "webs", "payments"]);
    }
}
