//! Kernel addresses to `function+0xoffset`, from /proc/kallsyms. A drop location repeats (the
//! same few functions free most packets), so each address is looked up once.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Symbolizer {
    cache: HashMap<u64, String>,
}

impl Symbolizer {
    /// `function+0xoffset`, or the bare address when kallsyms hides addresses (kptr_restrict) or
    /// has no symbol below it.
    pub fn symbolize(&mut self, address: u64) -> String {
        if let Some(known) = self.cache.get(&address) {
            return known.clone();
        }
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let name = nearest_symbol(&text, address).unwrap_or_else(|| format!("{address:#x}"));
        self.cache.insert(address, name.clone());
        name
    }
}

/// The text symbol at or below `address` in kallsyms text, as `name+0xoffset`.
pub fn nearest_symbol(kallsyms: &str, address: u64) -> Option<String> {
    let mut best: Option<(u64, &str)> = None;
    for line in kallsyms.lines() {
        let mut parts = line.split_whitespace();
        let (Some(start), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(start) = u64::from_str_radix(start, 16) else { continue };
        if start != 0 && start <= address && best.is_none_or(|(b, _)| start > b) {
            best = Some((start, name));
        }
    }
    best.map(|(start, name)| format!("{name}+{:#x}", address - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 T nf_hook_slow
ffffffff81a00100 t nf_hook_slow_list
ffffffff81a00080 d some_data
";

    #[test]
    fn finds_the_function_below() {
        assert_eq!(nearest_symbol(KALLSYMS, 0xffffffff81a00042).as_deref(), Some("nf_hook_slow+0x42"));
        assert_eq!(nearest_symbol(KALLSYMS, 0xffffffff81a00100).as_deref(), Some("nf_hook_slow_list+0x0"));
        assert_eq!(nearest_symbol(KALLSYMS, 0x1000), None);
        // Hidden addresses (kptr_restrict) are all zero: no symbol.
        assert_eq!(nearest_symbol("0000000000000000 T nf_hook_slow\n", 0xffffffff81a00042), None);
    }
}
