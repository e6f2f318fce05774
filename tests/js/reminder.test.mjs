// The spot reminder's calendar file (static/reminder.js), run by tests/serve/test_reminder.py.
import assert from "node:assert/strict";
import {test} from "node:test";

import {reminderIcs} from "../../src/dermalab/serve/static/reminder.js";

const base = {summary: "Photograph your skin spot again", uid: "u1@dermalab",
              description: "Same light, same distance; see a doctor sooner if it changes."};

function unfold(text) {
  return text.replace(/\r\n /g, "");
}

test("an all-day monthly event one month on, with an alarm", () => {
  const ics = reminderIcs({...base, from: new Date(2026, 11, 7, 15, 30)});
  assert.ok(ics.endsWith("\r\n") && !/[^\r]\n/.test(ics), "every line ends in CRLF");
  const lines = unfold(ics).split("\r\n");
  for (const want of ["BEGIN:VCALENDAR", "VERSION:2.0", "BEGIN:VEVENT", "UID:u1@dermalab",
                      "DTSTART;VALUE=DATE:20270107", "DTEND;VALUE=DATE:20270108",
                      "RRULE:FREQ=MONTHLY;INTERVAL=1", "BEGIN:VALARM",
                      "TRIGGER;RELATED=START:PT9H", "END:VEVENT", "END:VCALENDAR"]) {
    assert.ok(lines.includes(want), want);
  }
  assert.ok(lines.includes("DESCRIPTION:Same light\\, same distance\\; see a doctor sooner if "
                           + "it changes."));
});

test("a month with fewer days ends on its last day, and intervals are kept", () => {
  const ics = unfold(reminderIcs({...base, from: new Date(2027, 0, 31), everyMonths: 1}));
  assert.ok(ics.includes("DTSTART;VALUE=DATE:20270228"));
  const q = unfold(reminderIcs({...base, from: new Date(2026, 10, 30), everyMonths: 3}));
  assert.ok(q.includes("DTSTART;VALUE=DATE:20270228") && q.includes("INTERVAL=3"));
});

test("long lines fold at 75 octets without splitting a character", () => {
  const summary = "피부 사진을 다시 찍을 때입니다 — 같은 빛, 같은 거리에서 찍어 주세요. ".repeat(4);
  const ics = reminderIcs({...base, summary, from: new Date(2026, 0, 1)});
  const enc = new TextEncoder();
  for (const line of ics.split("\r\n")) assert.ok(enc.encode(line).length <= 75, line);
  assert.ok(unfold(ics).includes(`SUMMARY:${summary.replace(/,/g, "\\,")}`));
  assert.ok(!ics.includes("\uFFFD"));
});
