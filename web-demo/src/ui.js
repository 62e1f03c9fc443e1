// Small DOM helpers: element builder, toasts, and a modal dialog on <dialog>
// (native focus trapping and Escape handling keep it keyboard reachable).

export const $ = (id) => document.getElementById(id);

/** h('button', {class: 'x', onclick}, 'text', child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function toast(message, kind = 'info', ms = 4500) {
  const el = h('div', { class: `toast ${kind}` }, message);
  const box = $('toasts');
  box.append(el);
  // A few at a time: the oldest make room.
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), ms);
}

/** Reports an error to the person (never to the console: a failed request is
 * an expected event, and the page keeps the console clean). */
export function showError(prefix, err) {
  const msg = err && err.message ? err.message : String(err);
  toast(`${prefix}: ${msg}`, 'error', 7000);
}

/** Settles the last opening of the dialog (see `dialog`), while it has not. */
let settlePending = null;

/**
 * Opens the modal dialog. `actions` is a list of {label, value, kind}; resolves
 * with the value of the button pressed, or null on Escape.
 * `body` is a Node or a string; `input` (optional) adds a labelled text field whose
 * value is returned as {value, text}.
 */
export function dialog({ title, body, actions, input, wide = false }) {
  const dlg = $('dlg');
  // The browser fires `close` as a task after `close()`: a dialog opened
  // again before that task ran (Cancel, then Delete at once) must not take
  // the earlier close as its own. The earlier opening settles now, with its
  // value, and the late event finds the dialog open and is ignored.
  if (settlePending) settlePending();
  dlg.classList.toggle('wide', !!wide);
  $('dlg-title').textContent = title;
  const bodyEl = $('dlg-body');
  bodyEl.replaceChildren();
  if (typeof body === 'string') bodyEl.append(h('p', {}, body));
  else if (body) bodyEl.append(body);
  let field = null;
  if (input) {
    field = h('input', {
      type: 'text',
      id: 'dlg-input',
      value: input.value || '',
      'aria-label': input.label,
      placeholder: input.placeholder || '',
      autocomplete: 'off',
      spellcheck: 'false',
    });
    bodyEl.append(h('label', { for: 'dlg-input', class: 'field-label' }, input.label), field);
  }
  const acts = $('dlg-actions');
  acts.replaceChildren();
  for (const a of actions) {
    // Cancel is a plain button so that Enter in the text field submits the
    // primary action (implicit submission uses the first submit button).
    const cancel = a.value === 'cancel';
    acts.append(
      h(
        'button',
        {
          type: cancel ? 'button' : 'submit',
          value: a.value,
          class: a.kind || '',
          // The visible label is part of the name (WCAG 2.5.3).
          'aria-label': a.aria && !a.aria.toLowerCase().includes(a.label.toLowerCase()) ? `${a.label} (${a.aria})` : a.aria || a.label,
          dataset: { action: a.value },
          onclick: cancel ? () => dlg.close('cancel') : null,
        },
        a.label,
      ),
    );
  }
  return new Promise((resolve) => {
    const done = () => {
      settlePending = null;
      dlg.removeEventListener('close', onClose);
      const v = dlg.returnValue || null;
      if (input) resolve(v && v !== 'cancel' ? { value: v, text: field.value.trim() } : null);
      else resolve(v && v !== 'cancel' ? v : null);
    };
    const onClose = () => {
      if (!dlg.open) done();
    };
    settlePending = done;
    dlg.returnValue = '';
    dlg.addEventListener('close', onClose);
    dlg.showModal();
    if (field) {
      field.focus();
      field.select();
    } else {
      const primary = acts.querySelector('button.primary') || acts.querySelector('button');
      if (primary) primary.focus();
    }
  });
}

export async function confirmDialog(title, text, label = 'Delete') {
  const v = await dialog({
    title,
    body: text,
    actions: [
      { label: 'Cancel', value: 'cancel' },
      { label, value: 'ok', kind: 'danger' },
    ],
  });
  return v === 'ok';
}

export async function promptDialog(title, label, value = '', okLabel = 'OK') {
  const v = await dialog({
    title,
    input: { label, value },
    actions: [
      { label: 'Cancel', value: 'cancel' },
      { label: okLabel, value: 'ok', kind: 'primary' },
    ],
  });
  return v ? v.text : null;
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** Human-readable byte count. */
export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

/** Offers a Blob to the person as a download named `name`. */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  // The download has its own reference by now; give it a moment anyway.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Removes terminal escape sequences and handles carriage returns well
 * enough for a log view (progress bars redraw their line). */
export function plainText(s) {
  // eslint-disable-next-line no-control-regex
  const noEsc = s.replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-B]|\x1b[=>]/g, '');
  return noEsc
    .split('\n')
    .map((line) => {
      const parts = line.split('\r').filter((p) => p !== '');
      return parts.length ? parts[parts.length - 1] : '';
    })
    .join('\n');
}
