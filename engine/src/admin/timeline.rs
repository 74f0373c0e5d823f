//! A saga's steps as an SVG diagram: the forward path left to right, each step's box coloured by
//! its state, and under it the compensation path right to left, for the steps that can be undone.
//! Built as markup on the server, so the detail page needs no script to draw it.

use std::collections::BTreeMap;

use maud::{Markup, html};
use orderflow_core::{StepStatus, StepView};

/// The word for a step state, as shown and used in CSS classes.
pub fn status_word(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Retrying => "retrying",
        StepStatus::Waiting => "waiting",
        StepStatus::Completed => "completed",
        StepStatus::Failed => "failed",
        StepStatus::Compensating => "compensating",
        StepStatus::Compensated => "compensated",
    }
}

const BOX_W: i32 = 156;
const GAP: i32 = 34;
const FWD_Y: i32 = 26;
const FWD_H: i32 = 68;
const COMP_Y: i32 = 136;
const COMP_H: i32 = 46;

/// The diagram. `compensations` names the compensation activity of each step that has one and
/// was seen scheduling it (the definition does not expose them); `cursor` is the current step.
pub fn svg(
    steps: &[StepView],
    compensations: &BTreeMap<String, String>,
    cursor: Option<usize>,
) -> Markup {
    let n = steps.len() as i32;
    let width = 20 + n * (BOX_W + GAP);
    let height = COMP_Y + COMP_H + 14;
    let x = |i: usize| 10 + i as i32 * (BOX_W + GAP);
    // Steps that can be undone: compensatable ones always, a pivot when its compensation ran.
    let undoable: Vec<bool> = steps
        .iter()
        .map(|s| s.kind == "compensatable" || compensations.contains_key(&s.name))
        .collect();
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {width} {height}")) width=(width) height=(height)
            aria-label="saga steps: forward path and compensation path" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
                    orient="auto-start-reverse" {
                    path d="M0,0 L10,5 L0,10 z" .arrowhead {}
                }
            }
            text.lane x="10" y="16" { "forward" }
            @if undoable.iter().any(|u| *u) {
                text.lane x="10" y=(COMP_Y - 10) { "compensation (undo, right to left)" }
            }
            @for (i, s) in steps.iter().enumerate() {
                @let bx = x(i);
                @let word = status_word(s.status);
                @if i + 1 < steps.len() {
                    line.flow x1=(bx + BOX_W) y1=(FWD_Y + FWD_H / 2) x2=(bx + BOX_W + GAP - 2)
                        y2=(FWD_Y + FWD_H / 2) marker-end="url(#arrow)" {}
                }
                g.step data-step=(s.name) data-status=(word) {
                    title { (step_title(s)) }
                    rect class=(format!("box st-{word}{}", if cursor == Some(i) { " current" } else { "" }))
                        x=(bx) y=(FWD_Y) width=(BOX_W) height=(FWD_H) rx="8" {}
                    text.name x=(bx + 10) y=(FWD_Y + 19) { (s.name) }
                    @if s.kind == "pivot" {
                        text.kind x=(bx + BOX_W - 10) y=(FWD_Y + 19) text-anchor="end" { "pivot" }
                    } @else if s.kind == "retriable" {
                        text.kind x=(bx + BOX_W - 10) y=(FWD_Y + 19) text-anchor="end" { "retriable" }
                    } @else if s.kind == "wait" {
                        text.kind x=(bx + BOX_W - 10) y=(FWD_Y + 19) text-anchor="end" { "wait" }
                    }
                    @if let Some(w) = &s.waiting_for {
                        text.activity x=(bx + 10) y=(FWD_Y + 37) { "signal " (w.signal) }
                        text.state x=(bx + 10) y=(FWD_Y + 56) {
                            "waiting until " (w.until.format("%Y-%m-%d %H:%M"))
                        }
                    } @else {
                        text.activity x=(bx + 10) y=(FWD_Y + 37) { (s.activity) }
                        text.state x=(bx + 10) y=(FWD_Y + 56) {
                            (word)
                            @if s.attempts > 0 { " · attempt " (s.attempts) }
                        }
                    }
                }
                @if undoable[i] {
                    @let comp_word = match s.status {
                        StepStatus::Compensating | StepStatus::Compensated => word,
                        _ => "idle",
                    };
                    line.undo x1=(bx + BOX_W / 2) y1=(FWD_Y + FWD_H) x2=(bx + BOX_W / 2) y2=(COMP_Y) {}
                    g.compensation data-step=(s.name) data-status=(comp_word) {
                        rect class=(format!("box comp st-{comp_word}")) x=(bx) y=(COMP_Y)
                            width=(BOX_W) height=(COMP_H) rx="8" {}
                        text.activity x=(bx + 10) y=(COMP_Y + 18) {
                            "↩ " (compensations.get(&s.name).map_or("compensation", String::as_str))
                        }
                        text.state x=(bx + 10) y=(COMP_Y + 36) {
                            @if comp_word == "idle" { "not needed yet" } @else { (comp_word) }
                            @if s.compensation_attempts > 0 { " · attempt " (s.compensation_attempts) }
                        }
                    }
                    @if let Some(prev) = (0..i).rev().find(|&j| undoable[j]) {
                        line.undo-flow x1=(bx - 2) y1=(COMP_Y + COMP_H / 2) x2=(x(prev) + BOX_W + 2)
                            y2=(COMP_Y + COMP_H / 2) marker-end="url(#arrow)" {}
                    }
                }
            }
        }
    }
}

fn step_title(s: &StepView) -> String {
    let mut t = match &s.waiting_for {
        Some(w) => format!(
            "{} (waits for signal `{}` until {}, {})",
            s.name,
            w.signal,
            w.until.to_rfc3339(),
            s.kind
        ),
        None => format!("{} ({}, {})", s.name, s.activity, s.kind),
    };
    if let Some(e) = &s.last_error {
        t.push_str(&format!("\nlast error: {}: {}", e.code, e.message));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, kind: &str, status: StepStatus) -> StepView {
        StepView {
            name: name.into(),
            activity: format!("{name}.do"),
            kind: kind.into(),
            status,
            attempts: 1,
            compensation_attempts: 0,
            last_error: None,
            output: None,
            started_at: None,
            finished_at: None,
            waiting_for: None,
        }
    }

    #[test]
    fn a_waiting_step_says_what_it_waits_for_and_until_when() {
        let until = chrono::DateTime::parse_from_rfc3339("2026-12-21T08:00:00Z")
            .unwrap()
            .to_utc();
        let mut wait = step("await_parcel", "wait", StepStatus::Waiting);
        wait.activity = String::new();
        wait.waiting_for = Some(orderflow_core::WaitView {
            signal: "parcel_received".into(),
            until,
        });
        let svg = svg(&[wait], &BTreeMap::new(), Some(0)).into_string();
        assert!(svg.contains("box st-waiting current"), "{svg}");
        assert!(svg.contains("signal parcel_received"), "{svg}");
        assert!(svg.contains("waiting until 2026-12-21 08:00"), "{svg}");
    }

    #[test]
    fn draws_each_step_with_its_state_and_the_undo_path() {
        let steps = [
            step("reserve", "compensatable", StepStatus::Compensated),
            step("charge", "compensatable", StepStatus::Failed),
            step("notify", "retriable", StepStatus::Pending),
        ];
        let comps = BTreeMap::from([("reserve".to_owned(), "inventory.release".to_owned())]);
        let svg = svg(&steps, &comps, Some(1)).into_string();
        assert!(
            svg.contains(r#"data-step="charge" data-status="failed""#),
            "{svg}"
        );
        assert!(svg.contains("box st-failed current"));
        assert!(svg.contains("↩ inventory.release"));
        assert_eq!(
            svg.matches("class=\"compensation\"").count(),
            2,
            "notify cannot be undone"
        );
    }
}
