//! Damage: the rectangles of a picture that changed, kept so that what is sent for them never
//! exceeds the picture itself (no rectangle inside another, and the whole set collapses to its
//! bounding box once the rectangles cover as much as it does).

use vgpud_protocol::Rect;

use crate::device::inside;

/// Rectangles kept before they are merged into their bounding box.
pub const MAX_DAMAGE: usize = 32;

fn area(r: &Rect) -> u64 {
    u64::from(r.width) * u64::from(r.height)
}

pub fn bounding(rects: &[Rect]) -> Rect {
    let x0 = rects.iter().map(|r| r.x).min().unwrap_or(0);
    let y0 = rects.iter().map(|r| r.y).min().unwrap_or(0);
    let x1 = rects
        .iter()
        .map(|r| r.x.saturating_add(r.width))
        .max()
        .unwrap_or(0);
    let y1 = rects
        .iter()
        .map(|r| r.y.saturating_add(r.height))
        .max()
        .unwrap_or(0);
    Rect {
        x: x0,
        y: y0,
        width: x1.saturating_sub(x0),
        height: y1.saturating_sub(y0),
    }
}

/// Adds `r` to `list`.
pub fn add(list: &mut Vec<Rect>, r: Rect) {
    if area(&r) == 0 || list.iter().any(|d| inside(&r, d)) {
        return;
    }
    list.retain(|d| !inside(d, &r));
    list.push(r);
    let all = bounding(list);
    let covered: u64 = list.iter().map(area).sum();
    if list.len() > MAX_DAMAGE || covered >= area(&all) {
        *list = vec![all];
    }
}

/// What is left of `d` once `r` (inside it) is taken out: up to four rectangles.
pub fn subtract(d: &Rect, r: &Rect) -> Vec<Rect> {
    let (dx1, dy1) = (d.x + d.width, d.y + d.height);
    let (rx1, ry1) = (r.x + r.width, r.y + r.height);
    let parts = [
        // Above and below r, full width of d.
        Rect {
            x: d.x,
            y: d.y,
            width: d.width,
            height: r.y.saturating_sub(d.y),
        },
        Rect {
            x: d.x,
            y: ry1,
            width: d.width,
            height: dy1.saturating_sub(ry1),
        },
        // Left and right of r, r's rows.
        Rect {
            x: d.x,
            y: r.y,
            width: r.x.saturating_sub(d.x),
            height: r.height,
        },
        Rect {
            x: rx1,
            y: r.y,
            width: dx1.saturating_sub(rx1),
            height: r.height,
        },
    ];
    parts.into_iter().filter(|p| area(p) > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn the_same_rectangle_again_adds_nothing() {
        let mut list = Vec::new();
        for _ in 0..100 {
            add(&mut list, rect(0, 0, 640, 480));
        }
        assert_eq!(list, vec![rect(0, 0, 640, 480)]);
        add(&mut list, rect(10, 10, 5, 5));
        assert_eq!(list.len(), 1, "inside what is there");
    }

    #[test]
    fn overlapping_rectangles_never_sum_past_their_box() {
        let mut list = Vec::new();
        for i in 0..64 {
            add(&mut list, rect(i, i, 100, 100));
            let sum: u64 = list.iter().map(area).sum();
            assert!(sum <= area(&bounding(&list)), "{list:?}");
        }
        let mut apart = Vec::new();
        add(&mut apart, rect(0, 0, 10, 10));
        add(&mut apart, rect(500, 500, 10, 10));
        assert_eq!(apart.len(), 2, "far apart: kept apart");
    }

    #[test]
    fn subtracting_leaves_the_rest() {
        let d = rect(0, 0, 100, 100);
        let parts = subtract(&d, &rect(10, 20, 30, 40));
        let sum: u64 = parts.iter().map(area).sum();
        assert_eq!(sum, 100 * 100 - 30 * 40);
        assert!(subtract(&d, &d).is_empty());
    }
}
