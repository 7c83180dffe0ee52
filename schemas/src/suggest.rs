//! "Did you mean …?" hints for misspelt keys, kinds and names.

/// The candidate closest to `input`, if one is close enough to be a likely
/// typo: a case-insensitive match, or within an edit distance that grows
/// with the word's length (one edit for short words, up to three).
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let lower = input.to_ascii_lowercase();
    let budget = match input.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .filter(|candidate| *candidate != input)
        .filter_map(|candidate| {
            let distance = strsim::damerau_levenshtein(&lower, &candidate.to_ascii_lowercase());
            (distance <= budget).then_some((distance, candidate))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `did you mean `x`?`, when a close candidate exists.
pub fn did_you_mean<'a, I>(input: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    closest(input, candidates).map(|candidate| format!("did you mean `{candidate}`?"))
}

/// Backticked, comma-separated list for "expected one of …" messages.
pub fn one_of(candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos() {
        let fields = ["name", "description", "selector", "hosts"];
        assert_eq!(closest("nmae", fields), Some("name"));
        assert_eq!(closest("selctor", fields), Some("selector"));
        assert_eq!(closest("Hosts", fields), Some("hosts"));
        assert_eq!(closest("zzzzzz", fields), None);
    }

    #[test]
    fn short_words_need_a_close_match() {
        assert_eq!(closest("ab", ["name"]), None);
        assert_eq!(closest("nam", ["name"]), Some("name"));
    }
}
