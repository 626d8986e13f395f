// effscale's part of the optuna-dashboard page (served by effscale.search.dashboard_page).
//
// Reads /effscale/api/studies/<id>/summary (badges and lines per trial, made by effscale) and
// puts them where a user looks first: the badges ("Infeasible", "In region") next to each
// trial's state chip in the trial list, and a card with the badges and lines right under the
// trial's title on its page. It only adds elements of its own (class "effscale-..."), at the end
// of a container or after one of the dashboard's elements, so React's own nodes stay as React
// made them; a MutationObserver puts them back after the dashboard re-renders.
(() => {
  "use strict";
  const REFRESH_MS = 5000;
  const TONES = { error: "#d32f2f", success: "#2e7d32", default: "#616161" };
  const state = { studyId: null, byNumber: new Map(), fetchedAt: 0, pending: null };

  function currentStudy() {
    const match = window.location.pathname.match(/\/dashboard\/studies\/(\d+)/);
    return match ? Number(match[1]) : null;
  }

  function load(studyId) {
    if (state.pending) return state.pending;
    state.pending = fetch(`/effscale/api/studies/${studyId}/summary`, { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : null))
      .then((body) => {
        if (body && currentStudy() === studyId) {
          state.studyId = studyId;
          state.byNumber = new Map(body.trials.map((t) => [t.number, t]));
          state.fetchedAt = Date.now();
          schedule();
        }
      })
      .catch(() => {})
      .finally(() => {
        state.pending = null;
      });
    return state.pending;
  }

  function badge(item) {
    const color = TONES[item.tone] || TONES.default;
    const chip = document.createElement("span");
    chip.className = "effscale-badge";
    chip.textContent = item.label;
    Object.assign(chip.style, {
      display: "inline-flex",
      alignItems: "center",
      height: "24px",
      padding: "0 8px",
      marginLeft: "6px",
      border: `1px solid ${color}`,
      borderRadius: "12px",
      color: color,
      fontSize: "0.8125rem",
      fontWeight: "500",
      lineHeight: "1",
      whiteSpace: "nowrap",
      boxSizing: "border-box",
      verticalAlign: "middle",
    });
    return chip;
  }

  function keyOf(summary) {
    return JSON.stringify([summary.number, summary.badges, summary.lines]);
  }

  function decorateList() {
    for (const primary of document.querySelectorAll(".MuiListItemText-primary")) {
      const match = primary.textContent.match(/^Trial (\d+)$/);
      if (!match) continue;
      const button = primary.closest(".MuiListItemButton-root");
      const chip = button && button.querySelector(".MuiChip-root");
      if (!chip) continue;
      const summary = state.byNumber.get(Number(match[1]));
      const holder = chip.parentElement;
      let mine = holder.querySelector(":scope > .effscale-badges");
      if (!summary || summary.badges.length === 0) {
        if (mine) mine.remove();
        continue;
      }
      const key = keyOf(summary);
      if (mine && mine.dataset.key === key) continue;
      if (!mine) {
        mine = document.createElement("span");
        mine.className = "effscale-badges";
        holder.appendChild(mine);
      }
      mine.dataset.key = key;
      mine.replaceChildren(...summary.badges.map(badge));
    }
  }

  function decorateDetail() {
    for (const heading of document.querySelectorAll("h4")) {
      const match = heading.textContent.match(/^Trial (\d+) \(trial_id=\d+\)$/);
      if (!match) continue;
      const chips = heading.nextElementSibling;
      if (!chips) continue;
      const summary = state.byNumber.get(Number(match[1]));
      let card = chips.nextElementSibling;
      if (!card || !card.classList.contains("effscale-summary")) {
        if (!summary) continue;
        card = document.createElement("div");
        card.className = "effscale-summary";
        chips.after(card);
      }
      if (!summary) {
        card.remove();
        continue;
      }
      const key = keyOf(summary);
      if (card.dataset.key === key) continue;
      card.dataset.key = key;
      card.dataset.number = String(summary.number);
      const tone =
        summary.feasible === false ? TONES.error : summary.feasible ? TONES.success : TONES.default;
      Object.assign(card.style, {
        borderLeft: `4px solid ${tone}`,
        background: "rgba(127, 127, 127, 0.08)",
        borderRadius: "4px",
        padding: "8px 12px",
        margin: "0 0 12px 0",
        fontSize: "0.95rem",
        lineHeight: "1.5",
      });
      const head = document.createElement("div");
      head.className = "effscale-summary-head";
      Object.assign(head.style, { display: "flex", alignItems: "center", marginBottom: "4px" });
      const title = document.createElement("strong");
      title.textContent = "effscale";
      head.append(title, ...summary.badges.map(badge));
      const lines = summary.lines.map((text) => {
        const line = document.createElement("div");
        line.className = "effscale-summary-line";
        line.textContent = text;
        return line;
      });
      card.replaceChildren(head, ...lines);
    }
  }

  let scheduled = false;
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    window.requestAnimationFrame(() => {
      scheduled = false;
      const studyId = currentStudy();
      if (studyId === null) return;
      if (studyId !== state.studyId) {
        state.byNumber = new Map();
        state.studyId = null;
        load(studyId);
        return;
      }
      if (Date.now() - state.fetchedAt > REFRESH_MS) load(studyId);
      decorateList();
      decorateDetail();
    });
  }

  function start() {
    new MutationObserver(schedule).observe(document.body, { childList: true, subtree: true });
    window.setInterval(schedule, REFRESH_MS);
    schedule();
  }
  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
