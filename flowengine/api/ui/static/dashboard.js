// flowengine's dashboard: the few things a server-rendered page cannot do alone. No build step.
// 1. A run page follows its run over server-sent events and swaps in each new rendering.
// 2. Upload URLs' TTLs count down.
// 3. The flows page starts a run and PUTs the chosen files to its presigned URLs, with progress.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  function followRun() {
    const live = document.getElementById("live");
    if (!live || !live.dataset.events) return;
    const source = new EventSource(live.dataset.events);
    const status = () => (document.getElementById("run-status") || {}).textContent;
    let shown = status();
    source.addEventListener("live", (event) => {
      // Keep what the reader opened or closed, and where the keyboard was.
      const open = {};
      live.querySelectorAll("details[id]").forEach((d) => { open[d.id] = d.open; });
      const focused = live.contains(document.activeElement) ? document.activeElement.id : "";
      live.innerHTML = JSON.parse(event.data);
      live.querySelectorAll("details[id]").forEach((d) => {
        if (d.id in open) d.open = open[d.id];
      });
      if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      live.querySelectorAll("pre.tail").forEach((pre) => { pre.scrollTop = pre.scrollHeight; });
      if (status() !== shown) {  // a screen reader hears the run's new status, not the whole page again
        shown = status();
        document.getElementById("announce").textContent = `Run ${shown}`;
      }
      countDown();
      document.dispatchEvent(new CustomEvent("flowengine:live"));
    });
    source.addEventListener("end", () => {
      source.close();
      live.dataset.ended = "true";
    });
  }

  function remaining(seconds) {
    if (seconds <= 0) return "no time";
    const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
    return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : m ? `${m} min ${s} s` : `${s} s`;
  }

  function countDown() {
    const now = Date.now() / 1000;
    document.querySelectorAll(".countdown[data-deadline]").forEach((el) => {
      el.textContent = remaining(parseFloat(el.dataset.deadline) - now);
    });
  }

  // Headers a script may not set: the browser sends them itself (Content-Length from the file).
  const FORBIDDEN = new Set(["content-length", "host", "connection"]);

  function put(url, headers, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      for (const [name, value] of Object.entries(headers || {})) {
        if (!FORBIDDEN.has(name.toLowerCase())) xhr.setRequestHeader(name, value);
      }
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => (xhr.status < 300 ? resolve() : reject(new Error(`${xhr.status} ${xhr.responseText.slice(0, 200)}`))));
      xhr.addEventListener("error", () => reject(new Error("the upload failed (network)")));
      xhr.send(file);
    });
  }

  async function startRun(form) {
    const status = form.querySelector(".upload-status");
    const button = form.querySelector("button[type=submit]");
    const files = {};
    form.querySelectorAll("input[type=file]").forEach((input) => { if (input.files[0]) files[input.dataset.edge] = input.files[0]; });
    button.disabled = true;
    status.textContent = "Starting the run…";
    let run;
    try {
      const answer = await fetch(form.dataset.action, { method: "POST", headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" });
      const body = await answer.json();
      if (!answer.ok) throw new Error(body.Message || answer.statusText);
      run = body;
      const uploads = run.WaitingURLs.filter((w) => files[w.Artifact.EdgeName]);
      const done = {};
      const total = uploads.reduce((n, w) => n + files[w.Artifact.EdgeName].size, 0) || 1;
      const report = () => {
        const sent = uploads.reduce((n, w) => n + (done[w.Artifact.EdgeName] || 0) * files[w.Artifact.EdgeName].size, 0);
        status.textContent = `Uploading ${uploads.length} file${uploads.length === 1 ? "" : "s"}: ${Math.round((sent / total) * 100)} %`;
      };
      report();
      await Promise.all(uploads.map((w) => {
        const edge = w.Artifact.EdgeName;
        const bar = form.querySelector(`progress[data-progress="${CSS.escape(edge)}"]`);
        return put(w.PutURL, w.Headers, files[edge], (fraction) => {
          done[edge] = fraction;
          if (bar) bar.value = fraction;
          report();
        });
      }));
      status.textContent = "Uploaded. Opening the run…";
      window.location.assign(`/ui/runs/${run.ID}`);
    } catch (error) {
      button.disabled = false;
      status.textContent = `Failed: ${error.message}`;
      if (run) {
        const link = document.createElement("a");
        link.href = `/ui/runs/${run.ID}`;
        link.textContent = " Open the run";
        status.appendChild(link);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    followRun();
    countDown();
    setInterval(countDown, 1000);
    document.querySelectorAll("form.start").forEach((form) => {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        startRun(form);
      });
    });
  });
})();
