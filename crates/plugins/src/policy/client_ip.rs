//! The client address as a Cedar `ip` value, remembered per worker thread.
//!
//! `RestrictedExpression::new_ip` parses the extension function's name
//! ("ip") with Cedar's full grammar on every call: about 40,000
//! instructions, more than the rest of building a request's context. The
//! expression for an address never changes, so each thread keeps the last
//! few it built, in a small table indexed by the address.

use std::cell::RefCell;
use std::net::IpAddr;

use cedar_policy::RestrictedExpression;

/// Slots per worker thread; a power of two.
const SLOTS: usize = 64;

thread_local! {
    static MEMO: RefCell<Vec<Option<(IpAddr, RestrictedExpression)>>> =
        RefCell::new(vec![None; SLOTS]);
}

/// `ip("<client address>")`, as `RestrictedExpression::new_ip` builds it.
pub fn expression(ip: IpAddr) -> RestrictedExpression {
    let ip = ip.to_canonical();
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let slot = &mut memo[slot_of(ip)];
        match slot {
            Some((seen, expr)) if *seen == ip => expr.clone(),
            _ => {
                let expr = RestrictedExpression::new_ip(ip.to_string());
                *slot = Some((ip, expr.clone()));
                expr
            }
        }
    })
}

fn slot_of(ip: IpAddr) -> usize {
    let folded = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    // Fibonacci hashing: the product's top bits pick the slot, so
    // addresses differing in any octet spread over the table.
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_expressions_equal_fresh_ones() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let fresh = RestrictedExpression::new_ip(ip.to_canonical().to_string());
            // First call builds, second comes from the table.
            assert_eq!(format!("{:?}", expression(ip)), format!("{fresh:?}"));
            assert_eq!(format!("{:?}", expression(ip)), format!("{fresh:?}"));
        }
    }

    #[test]
    fn addresses_sharing_a_slot_replace_each_other_correctly() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut b = None;
        for i in 2..=255u8 {
            let c = IpAddr::from([10, 0, 0, i]);
            if slot_of(c) == slot_of(a) {
                b = Some(c);
                break;
            }
        }
        let b = b.expect("64 slots: two of 255 addresses share one");
        for ip in [a, b, a, b] {
            let fresh = RestrictedExpression::new_ip(ip.to_string());
            assert_eq!(format!("{:?}", expression(ip)), format!("{fresh:?}"));
        }
    }
}
