//! The space-time diagram as SVG, drawn in Rust (`launcher trace -o
//! FILE.svg`), with the layout of `assets/diagram.js`: one horizontal line
//! per server; events in the order of the global history, one column each
//! (logical time, as in ShiViz: a burst and a pause take the same room);
//! each message a colour, from its post (a square at the origin) to its
//! delivery at every server (a dot numbered with its position in that
//! server's delivery order of the room). In `total` every server numbers a
//! message the same; in `fifo` and `unordered` the numbers differ.

use super::{Event, Kind, Trace, html_escape};
use std::collections::HashMap;
use std::fmt::Write as _;

const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const ROW: f64 = 70.0;
const STEP: f64 = 26.0;

/// The colour of a message: a hue from a hash of its id (32-bit FNV-1a,
/// which spreads ids that differ only in the last digit), so that the
/// same message has the same colour in every picture (the script uses
/// the same hash).
pub fn colour(id: &str) -> String {
    let mut h: u32 = 2_166_136_261;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    format!("hsl({}, 70%, 42%)", h % 360)
}

/// The SVG of one room's messages, or of every room, one below the other.
pub fn render(trace: &Trace, room: Option<u32>) -> String {
    let rooms: Vec<u32> = match room {
        Some(r) => vec![r],
        None => trace.rooms().into_keys().collect(),
    };
    let servers: Vec<u32> = trace.servers.iter().copied().collect();
    let mut body = String::new();
    let mut y = 0.0;
    let mut width: f64 = 400.0;
    for r in &rooms {
        let events: Vec<&Event> = trace.events.iter().filter(|e| e.room == *r).collect();
        let (w, h) = room_svg(&mut body, *r, &servers, &events, y);
        width = width.max(w);
        y += h;
    }
    if rooms.is_empty() {
        let _ = write!(
            body,
            r#"<text x="10" y="30">no posts or deliveries in the logs</text>"#
        );
        y = 50.0;
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{y:.0}" viewBox="0 0 {width:.0} {y:.0}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>{body}</svg>
"#
    )
}

/// Draws one room at vertical offset `y0`; returns its width and height.
fn room_svg(
    out: &mut String,
    room: u32,
    servers: &[u32],
    events: &[&Event],
    y0: f64,
) -> (f64, f64) {
    let row_of: HashMap<u32, usize> = servers.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let width = LEFT + STEP * (events.len() as f64 + 1.0) + 20.0;
    let height = TOP + ROW * servers.len() as f64;
    let y = |s: u32| y0 + TOP + ROW * row_of.get(&s).copied().unwrap_or(0) as f64;
    let x = |i: usize| LEFT + STEP * (i as f64 + 1.0);
    let _ = write!(
        out,
        r#"<text x="10" y="{:.0}" font-size="14" font-weight="bold">chat room #{room}</text>"#,
        y0 + 18.0
    );
    for s in servers {
        let _ = write!(
            out,
            r##"<text x="10" y="{yy:.0}" dy="4">S{s:02}</text><line x1="{LEFT}" y1="{yy:.0}" x2="{width:.0}" y2="{yy:.0}" stroke="#888"/>"##,
            yy = y(*s)
        );
    }
    // Where each message was posted, to draw its arrows.
    let mut post_at: HashMap<&str, (f64, f64)> = HashMap::new();
    let mut rank: HashMap<u32, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if e.kind == Kind::Post {
            post_at.insert(&e.id, (x(i), y(e.server)));
        }
    }
    for (i, e) in events.iter().enumerate() {
        let (ex, ey) = (x(i), y(e.server));
        let c = colour(&e.id);
        match e.kind {
            Kind::Post => {
                let text = e.text.as_deref().unwrap_or("");
                let short: String = text.chars().take(14).collect();
                let _ = write!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{c}"><title>{} posted {}</title></rect><text x="{ex:.1}" y="{:.1}" text-anchor="middle" fill="{c}">{}</text>"#,
                    ex - 5.0,
                    ey - 5.0,
                    html_escape(&e.id),
                    html_escape(text),
                    ey - 10.0,
                    html_escape(&short)
                );
            }
            Kind::Deliver => {
                let n = rank.entry(e.server).or_insert(0);
                *n += 1;
                if let Some((px, py)) = post_at.get(e.id.as_str()) {
                    let _ = write!(
                        out,
                        r#"<line x1="{px:.1}" y1="{py:.1}" x2="{ex:.1}" y2="{ey:.1}" stroke="{c}" stroke-width="1.5" opacity="0.7"/>"#
                    );
                }
                let _ = write!(
                    out,
                    r#"<circle cx="{ex:.1}" cy="{ey:.1}" r="5" fill="{c}"><title>{} delivered at S{:02}, #{n}</title></circle><text x="{ex:.1}" y="{:.1}" text-anchor="middle">{n}</text>"#,
                    html_escape(&e.id),
                    e.server,
                    ey + 18.0
                );
            }
        }
    }
    (width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_match_the_script() {
        // diagram.js computes the same FNV-1a: hsl(h % 360) for "S01#1".
        assert_eq!(
            colour(""),
            format!("hsl({}, 70%, 42%)", 2_166_136_261u32 % 360)
        );
        assert_ne!(colour("S01#10"), colour("S01#11"));
    }

    #[test]
    fn one_message_three_servers() {
        let mut t = Trace::default();
        t.add_line("00:00:01.000000 S01 Client 1 posts \"a<b\" to chat room #2 as S01#1");
        for s in 1..=3 {
            t.add_line(&format!(
                "00:00:0{}.000000 S0{s} Delivered S01#1 to 1 member(s) of chat room #2",
                s + 1
            ));
        }
        t.sort();
        let svg = render(&t, None);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("<rect x=").count(), 1);
        // Three arrows from the post, plus one line per server.
        assert_eq!(svg.matches("<line").count(), 6);
        assert!(svg.contains("a&lt;b"));
        assert!(render(&Trace::default(), None).contains("no posts"));
    }
}
