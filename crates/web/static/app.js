// stageTime web view: swaps in the board the event stream sends (server-rendered and escaped
// there) and appends log lines as text (never as markup).
'use strict';
(function () {
  const live = document.getElementById('live');
  if (live && live.dataset.events) {
    const events = new EventSource(live.dataset.events);
    events.addEventListener('run', function (e) { live.innerHTML = e.data; });
    events.addEventListener('end', function () { events.close(); });
  }

  const pane = document.getElementById('log');
  const select = document.getElementById('log-run');
  const state = document.getElementById('log-state');
  if (!pane) { return; }
  let logs = null;

  function note(text) {
    const row = document.createElement('div');
    row.className = 'line note';
    row.textContent = text;
    pane.append(row);
  }

  function append(line) {
    const stick = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 8;
    const row = document.createElement('div');
    row.className = 'line';
    const where = document.createElement('span');
    where.className = 'where';
    where.textContent = line.run + ' › ' + line.task + ' › ' + line.step;
    const text = document.createElement('span');
    text.textContent = line.line;
    row.append(where, text);
    pane.append(row);
    if (stick) { pane.scrollTop = pane.scrollHeight; }
  }

  function follow(run) {
    if (logs) { logs.close(); }
    pane.textContent = '';
    state.textContent = 'following…';
    let url = pane.dataset.logs + '?follow=1';
    if (run) { url += '&run=' + encodeURIComponent(run); }
    logs = new EventSource(url);
    logs.addEventListener('line', function (e) { append(JSON.parse(e.data)); });
    logs.addEventListener('end', function () { logs.close(); state.textContent = 'complete'; });
    logs.addEventListener('problem', function (e) {
      logs.close(); state.textContent = ''; note(e.data);
    });
    logs.onerror = function () {
      if (logs.readyState === EventSource.CLOSED) { state.textContent = 'cannot read the logs'; }
    };
  }

  select.addEventListener('change', function () { follow(select.value); });
  document.addEventListener('click', function (e) {
    const button = e.target.closest('.logs-link');
    if (!button) { return; }
    select.value = button.dataset.run;
    follow(button.dataset.run);
    pane.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  });
  follow('');
})();
