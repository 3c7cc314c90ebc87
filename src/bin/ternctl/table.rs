//! Output tables in calicoctl's two styles: aligned columns for `get`, and boxed
//! tables for `node status` and `ipam show`.

/// Columns separated by three spaces, left aligned (calicoctl's `get` tables).
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Alignment of a boxed table's cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A boxed table with centered headers (calicoctl's `node status` / `ipam show`).
pub fn boxed(header: &[&str], rows: &[Vec<String>], align: &[Align]) -> String {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let sep = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let mut out = String::new();
    out.push_str(&sep);
    out.push('\n');
    out.push('|');
    for (i, h) in header.iter().enumerate() {
        out.push_str(&format!(" {h:^w$} |", w = widths[i]));
    }
    out.push('\n');
    out.push_str(&sep);
    out.push('\n');
    for r in rows {
        out.push('|');
        for (i, c) in r.iter().enumerate().take(n) {
            let a = align.get(i).copied().unwrap_or(Align::Left);
            match a {
                Align::Left => out.push_str(&format!(" {c:<w$} |", w = widths[i])),
                Align::Right => out.push_str(&format!(" {c:>w$} |", w = widths[i])),
            }
        }
        out.push('\n');
    }
    out.push_str(&sep);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_like_calicoctl() {
        let t = columns(
            &["NAME", "CIDR", "SELECTOR"],
            &[vec![
                "default-ipv4-ippool".into(),
                "192.168.0.0/16".into(),
                "all()".into(),
            ]],
        );
        assert_eq!(
            t,
            "NAME                  CIDR             SELECTOR\ndefault-ipv4-ippool   192.168.0.0/16   all()\n"
        );
    }

    #[test]
    fn boxed_like_calicoctl() {
        let t = boxed(
            &["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
            &[vec![
                "172.17.8.102".into(),
                "node-to-node mesh".into(),
                "up".into(),
                "23:30:04".into(),
                "Established".into(),
            ]],
            &[],
        );
        let want = "\
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |
+--------------+-------------------+-------+----------+-------------+
";
        assert_eq!(t, want);
    }
}
