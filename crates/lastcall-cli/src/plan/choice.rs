//! The choice of the service to check among a file's candidates (Compose services, ECS
//! containers, a pod's containers): the one named, else the one carrying `LASTCALL_*`
//! variables, else the only one that is not a mesh proxy.

use yaml_rust2::Yaml;

use super::Refusal;

/// A service the file may run lastcall in, for [`choose`].
pub(super) struct Candidate<'a> {
    pub(super) name: String,
    pub(super) item: &'a Yaml,
    /// It has `LASTCALL_*` variables.
    pub(super) carries: bool,
    /// A mesh proxy, never the application.
    pub(super) proxy: bool,
}

/// Picks the service to check: the one `wanted` names, else the one carrying `LASTCALL_*`
/// variables, else the only one that is not a mesh proxy; any ambiguity is refused with the
/// list to choose from and the flag that chooses.
pub(super) fn choose<'a>(
    what: &str,
    owner: &str,
    all: &[Candidate<'a>],
    wanted: Option<&str>,
) -> Result<(String, &'a Yaml), Refusal> {
    let names = |items: &[&Candidate<'a>]| {
        items
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let every: Vec<&Candidate<'a>> = all.iter().collect();
    if every.is_empty() {
        return Err(Refusal(format!("{owner} has no {what}s")));
    }
    if let Some(wanted) = wanted {
        return every
            .iter()
            .find(|c| c.name == wanted)
            .map(|c| (c.name.clone(), c.item))
            .ok_or_else(|| {
                Refusal(format!(
                    "{owner} has no {what} {wanted:?}; its {what}s are {}",
                    names(&every)
                ))
            });
    }
    let carrying: Vec<&Candidate<'a>> = every.iter().copied().filter(|c| c.carries).collect();
    let apps: Vec<&Candidate<'a>> = every.iter().copied().filter(|c| !c.proxy).collect();
    match (carrying.as_slice(), apps.as_slice()) {
        ([one], _) | ([], [one]) => Ok((one.name.clone(), one.item)),
        ([], _) => Err(Refusal(format!(
            "no {what} of {owner} carries LASTCALL_* variables, so the one that runs lastcall is ambiguous: its {what}s are {}; choose it with --container NAME",
            names(&every)
        ))),
        (several, _) => Err(Refusal(format!(
            "several {what}s of {owner} carry LASTCALL_* variables: {}; choose the one that runs lastcall with --container NAME",
            names(several)
        ))),
    }
}
