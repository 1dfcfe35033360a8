//! Which running containers a selector picks, and the names closest to one that picks none.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Container, ContainerSelector};

/// How a selector's text picked its containers. Decided once, when a session's run starts,
/// and kept for the containers that start later: a session on the exact name `web` does not
/// take in `web-2` when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// No text: labels alone.
    Labels,
    /// A container's exact name.
    Name,
    /// The start of a container's ID.
    IdPrefix,
    /// Part of a container's name.
    NamePart,
}

impl MatchedBy {
    /// Whether `container` matches `selector` this way (labels included).
    pub fn admits(self, selector: &ContainerSelector, container: &Container) -> bool {
        let labelled = selector
            .labels
            .iter()
            .all(|(key, value)| container.labels.get(key) == Some(value));
        let text = selector.container.as_deref().unwrap_or_default();
        labelled
            && match self {
                MatchedBy::Labels => true,
                MatchedBy::Name => container.name == text,
                MatchedBy::IdPrefix => container.id.starts_with(text),
                MatchedBy::NamePart => container.name.contains(text),
            }
    }
}

/// The containers `selector` picks: by exact name if any has it, else by ID prefix, else
/// by part of a name; and of those, the ones carrying every label. Also says which of those
/// ways picked them (`NamePart` when none did).
pub fn select<'a>(
    containers: &'a [Container],
    selector: &ContainerSelector,
) -> (MatchedBy, Vec<&'a Container>) {
    let ways: &[MatchedBy] = if selector.container.is_none() {
        &[MatchedBy::Labels]
    } else {
        &[MatchedBy::Name, MatchedBy::IdPrefix, MatchedBy::NamePart]
    };
    let mut last = (MatchedBy::NamePart, Vec::new());
    for &way in ways {
        let chosen: Vec<&Container> = containers
            .iter()
            .filter(|c| way.admits(selector, c))
            .collect();
        if !chosen.is_empty() {
            return (way, chosen);
        }
        last = (way, chosen);
    }
    last
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

    fn names((_, found): (MatchedBy, Vec<&Container>)) -> Vec<&str> {
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
        assert!(select(&all, &selector(Some("cache"), &[])).1.is_empty());
        assert_eq!(select(&all, &selector(Some("web"), &[])).0, MatchedBy::Name);
        assert_eq!(
            select(&all, &selector(Some("def"), &[])).0,
            MatchedBy::IdPrefix
        );
        assert_eq!(
            select(&all, &selector(Some("eb-"), &[])).0,
            MatchedBy::NamePart
        );
    }

    #[test]
    fn the_way_a_selector_matched_decides_for_containers_that_start_later() {
        let exact = selector(Some("pname"), &[]);
        let later = container("fff000", "pname-x", &[]);
        assert!(!MatchedBy::Name.admits(&exact, &later));
        assert!(MatchedBy::NamePart.admits(&exact, &later));
        assert!(MatchedBy::Name.admits(&exact, &container("aaa111", "pname", &[])));
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
        assert!(select(&all, &selector(None, &[("app", "none")]))
            .1
            .is_empty());
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
