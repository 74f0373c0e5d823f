// OrderFlow admin: the little the pages need beyond HTML. Served from the engine itself (no CDN):
// confirmation before any action, "select all" for bulk actions, and lists that refresh
// themselves while nobody is selecting rows or typing.
"use strict";

document.addEventListener("submit", (e) => {
  const form = e.target;
  const ask = form.dataset && form.dataset.confirm;
  if (ask && !window.confirm(ask)) {
    e.preventDefault();
  }
});

document.addEventListener("change", (e) => {
  const box = e.target;
  if (box.classList && box.classList.contains("select-all")) {
    const table = box.closest("table");
    for (const row of table.querySelectorAll('input[name="ids"]')) {
      row.checked = box.checked;
    }
  }
});

function busy() {
  if (document.querySelector('input[name="ids"]:checked, .select-all:checked')) return true;
  const active = document.activeElement;
  return !!(active && active.closest && active.closest("form"));
}

async function refresh(live) {
  if (document.visibilityState !== "visible" || busy()) return;
  try {
    const res = await fetch(window.location.href, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "refresh" },
    });
    if (res.redirected || !res.ok) {
      // A lost session shows the login page instead of a stale list.
      if (res.redirected) window.location.reload();
      return;
    }
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById("live");
    if (fresh && !busy()) {
      live.innerHTML = fresh.innerHTML;
      live.dataset.refreshedAt = new Date().toISOString();
    }
  } catch (_) {
    // The engine is restarting or the network blipped: the next tick tries again.
  }
}

window.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (!live) return;
  const seconds = Number(live.dataset.refresh || "0");
  if (seconds > 0) {
    window.setInterval(() => refresh(live), seconds * 1000);
  }
});
