//! What a block reply acknowledges.

/// Inclusive byte ranges.
pub type Ranges = Vec<(u64, u64)>;

/// The bytes of `start..=end` that a block reply acknowledges: all of them, less whatever the
/// reply lists as still expected (`data.expectBlocks`).
pub fn acknowledged(start: u64, end: u64, reply: &serde_json::Value) -> Ranges {
    let mut left = vec![(start, end)];
    for gap in reply["data"]["expectBlocks"].as_array().into_iter().flatten() {
        let (gap_start, gap_end) = (gap["startByte"].as_u64().unwrap(), gap["endByte"].as_u64().unwrap());
        left = left
            .into_iter()
            .flat_map(|(s, e)| {
                let before = (s < gap_start).then(|| (s, e.min(gap_start - 1)));
                let after = (e > gap_end).then(|| (s.max(gap_end + 1), e));
                before.into_iter().chain(after).filter(|(s, e)| s <= e)
            })
            .collect();
    }
    left
}
