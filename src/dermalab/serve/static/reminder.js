// A reminder to photograph a spot again, as an iCalendar file (RFC 5545) made in the browser:
// no server, no push service and no account is needed, and the person's calendar does the
// reminding. The event says only that a skin photo is due, never the spot's name or a
// result: calendars are often synced to other services, and photos of skin are health data.

// TEXT values escape backslash, semicolon, comma and newlines (RFC 5545 3.3.11).
function escapeText(s) {
  return String(s).replace(/\\/g, "\\\\").replace(/;/g, "\\;").replace(/,/g, "\\,")
    .replace(/\r?\n/g, "\\n");
}

// Lines longer than 75 octets are folded: CRLF and one space (RFC 5545 3.1), never inside a
// UTF-8 character.
function fold(line) {
  const bytes = new TextEncoder();
  const out = [];
  let cur = "";
  for (const ch of line) {
    const limit = out.length ? 74 : 75;  // a continuation line starts with the space
    if (bytes.encode(cur + ch).length > limit) { out.push(cur); cur = ch; } else cur += ch;
  }
  out.push(cur);
  return out.join("\r\n ");
}

function day(d) {
  return d.getFullYear().toString().padStart(4, "0") + String(d.getMonth() + 1).padStart(2, "0")
    + String(d.getDate()).padStart(2, "0");
}

function stamp(d) {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

// The calendar text: an all-day event ``everyMonths`` months after ``from`` (a Date), repeating
// every ``everyMonths`` months, with an alarm at 9:00 that day.
export function reminderIcs({from, everyMonths = 1, summary, description, uid}) {
  const first = new Date(from.getFullYear(), from.getMonth() + everyMonths, from.getDate());
  if (first.getDate() !== from.getDate()) first.setDate(0);  // 31 Jan + 1 month: 28/29 Feb
  const next = new Date(first.getFullYear(), first.getMonth(), first.getDate() + 1);
  const lines = [
    "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//dermalab//spot reminder//EN",
    "CALSCALE:GREGORIAN", "METHOD:PUBLISH", "BEGIN:VEVENT",
    `UID:${uid}`, `DTSTAMP:${stamp(from)}`,
    `DTSTART;VALUE=DATE:${day(first)}`, `DTEND;VALUE=DATE:${day(next)}`,
    `RRULE:FREQ=MONTHLY;INTERVAL=${everyMonths}`,
    `SUMMARY:${escapeText(summary)}`, `DESCRIPTION:${escapeText(description)}`,
    "TRANSP:TRANSPARENT",
    "BEGIN:VALARM", "ACTION:DISPLAY", `DESCRIPTION:${escapeText(summary)}`,
    "TRIGGER;RELATED=START:PT9H", "END:VALARM",
    "END:VEVENT", "END:VCALENDAR",
  ];
  return lines.map(fold).join("\r\n") + "\r\n";
}
