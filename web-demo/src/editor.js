// The editor: CodeMirror 6, a language mode picked by file extension, saves
// through the file API with If-Match. When the file changed underneath, the
// gateway answers 412 and the person chooses: reload theirs (after seeing it)
// or overwrite with ours. Neither version is ever dropped without a choice.

import { EditorView, basicSetup } from 'codemirror';
import { EditorState, Compartment } from '@codemirror/state';
import { keymap } from '@codemirror/view';
import { indentWithTab } from '@codemirror/commands';
import { oneDark } from '@codemirror/theme-one-dark';
import { javascript } from '@codemirror/lang-javascript';
import { json } from '@codemirror/lang-json';
import { css } from '@codemirror/lang-css';
import { html } from '@codemirror/lang-html';
import { markdown } from '@codemirror/lang-markdown';
import { python } from '@codemirror/lang-python';
import { api, ApiError } from './api.js';
import { $, h, dialog, showError, toast } from './ui.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const enc = new TextEncoder();

/** The language extension for a path, by its extension. */
export function languageFor(path) {
  const name = path.split('/').pop().toLowerCase();
  const ext = name.includes('.') ? name.split('.').pop() : '';
  switch (ext) {
    case 'js':
    case 'mjs':
    case 'cjs':
      return javascript();
    case 'jsx':
      return javascript({ jsx: true });
    case 'ts':
    case 'mts':
    case 'cts':
      return javascript({ typescript: true });
    case 'tsx':
      return javascript({ jsx: true, typescript: true });
    case 'json':
    case 'jsonc':
      return json();
    case 'css':
    case 'scss':
    case 'less':
      return css();
    case 'html':
    case 'htm':
    case 'vue':
    case 'svelte':
      return html();
    case 'md':
    case 'markdown':
      return markdown();
    case 'py':
    case 'pyi':
      return python();
    default:
      return [];
  }
}

export class Editor {
  constructor({ onSaved } = {}) {
    this.project = null;
    this.path = null;
    this.etag = null;
    this.savedText = '';
    this.saving = false;
    this.onSaved = onSaved || (() => {});
    this.lang = new Compartment();
    this.readOnly = new Compartment();
    this.view = new EditorView({
      parent: $('editor'),
      state: this.makeState('', []),
    });
    $('editor-save').addEventListener('click', () => this.save());
    this.render();
  }

  makeState(doc, lang) {
    return EditorState.create({
      doc,
      extensions: [
        basicSetup,
        oneDark,
        keymap.of([
          indentWithTab,
          {
            key: 'Mod-s',
            preventDefault: true,
            run: () => {
              this.save();
              return true;
            },
          },
        ]),
        this.lang.of(lang),
        this.readOnly.of(EditorState.readOnly.of(this.path === null)),
        EditorView.updateListener.of((u) => {
          if (u.docChanged) this.render();
        }),
        EditorView.contentAttributes.of({ 'aria-label': 'File content' }),
      ],
    });
  }

  get text() {
    return this.view.state.doc.toString();
  }

  get dirty() {
    return this.path !== null && this.text !== this.savedText;
  }

  render() {
    $('editor-path').textContent = this.path ? `${this.project}/${this.path}` : 'No file open';
    const state = $('editor-state');
    state.textContent = this.path ? (this.saving ? 'saving…' : this.dirty ? 'modified' : 'saved') : '';
    state.className = 'badge ' + (this.dirty ? 'warn' : 'ok');
    $('editor-save').disabled = !this.path || this.saving;
    $('editor').hidden = !this.path;
    $('editor-empty').hidden = !!this.path;
  }

  setBanner(text) {
    const b = $('editor-banner');
    if (!text) {
      b.hidden = true;
      b.replaceChildren();
      return;
    }
    b.hidden = false;
    b.replaceChildren(text);
  }

  /** Replaces the editor's whole content (a new file or a reload). */
  load(project, path, text, etag) {
    this.project = project;
    this.path = path;
    this.etag = etag;
    this.savedText = text;
    this.view.setState(this.makeState(text, path ? languageFor(path) : []));
    this.setBanner(null);
    this.render();
  }

  close() {
    this.load(null, null, '', null);
  }

  async open(project, path) {
    if (this.dirty && !(this.project === project && this.path === path)) {
      const v = await dialog({
        title: 'Unsaved changes',
        body: `${this.path} has changes that are not saved.`,
        actions: [
          { label: 'Cancel', value: 'cancel' },
          { label: 'Discard changes', value: 'discard', kind: 'danger' },
          { label: 'Save and open', value: 'save', kind: 'primary' },
        ],
      });
      if (!v) return false;
      if (v === 'save' && !(await this.save())) return false;
    }
    try {
      const { bytes, etag } = await api.readFile(project, path);
      let text;
      try {
        text = utf8.decode(bytes);
      } catch {
        toast(`${path} is not UTF-8 text; not opened in the editor`, 'warn');
        return false;
      }
      this.load(project, path, text, etag);
      return true;
    } catch (err) {
      showError(`Could not open ${path}`, err);
      return false;
    }
  }

  /** Saves with If-Match; on 412 asks how to resolve. Returns true when saved. */
  async save({ force = false } = {}) {
    if (!this.path || this.saving) return false;
    const project = this.project;
    const path = this.path;
    const text = this.text;
    this.saving = true;
    this.render();
    try {
      const opts = force || !this.etag ? {} : { ifMatch: this.etag };
      const res = await api.writeFile(project, path, enc.encode(text), opts);
      if (this.project === project && this.path === path) {
        this.etag = res && res.etag ? res.etag : this.etag;
        this.savedText = text;
        this.setBanner(null);
      }
      this.onSaved(project, path);
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 412) {
        this.saving = false;
        this.render();
        return this.resolveConflict(project, path, text);
      }
      showError(`Could not save ${path}`, err);
      return false;
    } finally {
      this.saving = false;
      this.render();
    }
  }

  /** The file changed since we read it: show both sides and let the person
   * choose. Nothing is written or discarded before the choice. */
  async resolveConflict(project, path, mine) {
    let theirs = null;
    let theirsEtag = null;
    try {
      const r = await api.readFile(project, path);
      theirsEtag = r.etag;
      try {
        theirs = utf8.decode(r.bytes);
      } catch {
        theirs = `(${r.bytes.length} bytes, not UTF-8 text)`;
      }
    } catch (err) {
      theirs = err instanceof ApiError && err.status === 404 ? '(the file was deleted)' : `(could not read: ${err.message})`;
    }
    this.setBanner(`${path} changed on disk since you opened it. Your version is still here, unsaved.`);
    const body = h(
      'div',
      { class: 'conflict' },
      h('p', {}, `${path} was changed by someone else since you opened it. Choose which version to keep.`),
      h(
        'div',
        { class: 'conflict-cols' },
        h('div', {}, h('h4', {}, 'On disk (theirs)'), h('pre', { class: 'conflict-theirs', tabindex: 0, 'aria-label': 'Version on disk' }, theirs)),
        h('div', {}, h('h4', {}, 'In the editor (yours)'), h('pre', { class: 'conflict-mine', tabindex: 0, 'aria-label': 'Your version' }, mine)),
      ),
    );
    const choice = await dialog({
      title: 'File changed on disk',
      body,
      actions: [
        { label: 'Keep editing', value: 'cancel' },
        { label: 'Reload theirs (drop mine)', value: 'reload', kind: 'danger', aria: 'Reload the version on disk, dropping my changes' },
        { label: 'Overwrite with mine', value: 'overwrite', kind: 'primary', aria: 'Overwrite the file on disk with my version' },
      ],
    });
    if (choice === 'reload') {
      // Re-read rather than reuse what the dialog showed: it may have moved on.
      if (await this.open(project, path)) toast(`Reloaded ${path} from disk`);
      return false;
    }
    if (choice === 'overwrite') {
      this.etag = theirsEtag;
      // Conditional on the version just shown, so a third writer is still caught.
      return this.save({ force: !theirsEtag });
    }
    return false;
  }

  /** A watch event says the open file changed: reload when we have no local
   * changes, else warn (the save will then resolve the conflict). */
  async externalChange(kind) {
    if (!this.path) return;
    const project = this.project;
    const path = this.path;
    if (kind === 'removed') {
      this.setBanner(`${path} was deleted on disk. Save to write it again.`);
      this.etag = null;
      return;
    }
    // Look in the parent's listing first: watch events are debounced, so the
    // file may have been renamed or deleted since, and reading it then would
    // only produce a 404 (and a console error); an unchanged etag needs no read.
    const slash = path.lastIndexOf('/');
    let entry;
    try {
      const listing = await api.list(project, slash < 0 ? '' : path.slice(0, slash));
      entry = (listing.entries || []).find((e) => e.path === path);
    } catch {
      return;
    }
    if (!entry || entry.kind !== 'file') return;
    if (entry.etag && `"${entry.etag}"` === this.etag) return;
    try {
      const { bytes, etag } = await api.readFile(project, path);
      if (this.project !== project || this.path !== path || etag === this.etag) return;
      if (!this.dirty && !this.saving) {
        let text;
        try {
          text = utf8.decode(bytes);
        } catch {
          return;
        }
        this.load(project, path, text, etag);
      } else {
        this.setBanner(`${path} changed on disk. Saving will ask which version to keep.`);
      }
    } catch {
      // Gone or unreachable: the next save tells.
    }
  }
}
