//! Kernel text symbols from `/proc/kallsyms` (as `grep ' [tT] ' /proc/kallsyms` lists
//! them), to name the function that freed a dropped packet. Side effects: reads one file.
//! Addresses read as zero without CAP_SYSLOG (kptr_restrict): then nothing resolves.

/// Sorted text symbols. The names share one string: a kernel has ~80,000 text symbols,
/// and a `String` each was 5 MiB of the agent's memory.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (address, start and end of the name in `names`), ascending by address.
    symbols: Vec<(u64, u32, u32)>,
    names: String,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`.
    ///
    /// # Errors
    /// The I/O error when the file cannot be read.
    pub fn read() -> std::io::Result<Kallsyms> {
        Ok(Kallsyms::parse(&std::fs::read_to_string("/proc/kallsyms")?))
    }

    /// Parses kallsyms text; keeps text symbols (`t`/`T`) with a nonzero address.
    pub fn parse(text: &str) -> Kallsyms {
        let mut names = String::new();
        let mut symbols: Vec<(u64, u32, u32)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                if addr == 0 || (kind != "t" && kind != "T") {
                    return None;
                }
                let start = names.len() as u32;
                names.push_str(name);
                Some((addr, start, names.len() as u32))
            })
            .collect();
        // By address, then name: the same order as sorting (address, name) pairs.
        symbols.sort_by(|a, b| {
            (a.0, &names[a.1 as usize..a.2 as usize])
                .cmp(&(b.0, &names[b.1 as usize..b.2 as usize]))
        });
        symbols.shrink_to_fit();
        names.shrink_to_fit();
        Kallsyms { symbols, names }
    }

    /// Whether any address was readable.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The function containing `addr`: the nearest symbol at or below it.
    pub fn function(&self, addr: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|&(a, _, _)| a <= addr);
        let (_, start, end) = *self.symbols.get(i.checked_sub(1)?)?;
        Some(&self.names[start as usize..end as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_an_address_inside_a_function() {
        let k = Kallsyms::parse(
            "ffffffff81a00000 T nf_hook_slow\n\
             ffffffff81a00100 t nf_hook_slow_list\n\
             ffffffff81a00200 D some_data\n\
             ffffffff81b00000 T __udp4_lib_rcv\n",
        );
        assert_eq!(k.function(0xffffffff81a00042), Some("nf_hook_slow"));
        assert_eq!(k.function(0xffffffff81a00100), Some("nf_hook_slow_list"));
        assert_eq!(k.function(0xffffffff81b00010), Some("__udp4_lib_rcv"));
        assert_eq!(k.function(0x1000), None);
    }

    #[test]
    fn zeroed_addresses_resolve_nothing() {
        let k = Kallsyms::parse("0000000000000000 T nf_hook_slow\n");
        assert!(k.is_empty());
    }
}
