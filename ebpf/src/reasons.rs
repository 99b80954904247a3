//! Names of the kernel's drop reasons (`enum skb_drop_reason`), read from the tracepoint's format
//! in tracefs: its `__print_symbolic` list is exactly the running kernel's.

use std::collections::HashMap;

/// Parses `{ 12, "NETFILTER_DROP" }` pairs out of a tracepoint format file.
pub fn parse_format(format: &str) -> HashMap<u32, String> {
    let Some(start) = format.find("__print_symbolic(") else { return HashMap::new() };
    format[start..]
        .split('{')
        .skip(1)
        .filter_map(|pair| {
            let (number, rest) = pair.split_once(',')?;
            let name = rest.split('"').nth(1)?;
            Some((number.trim().parse().ok()?, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_symbolic_list() {
        let format = r#"print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 12, "NETFILTER_DROP" }, { 128, "MAX" })"#;
        let names = parse_format(format);
        assert_eq!(names[&12], "NETFILTER_DROP");
        assert_eq!(names[&2], "NOT_SPECIFIED");
        assert_eq!(names.len(), 3);
        assert!(parse_format("no list").is_empty());
    }
}
