// The editor's look: One Dark's editor theme with its syntax colours made
// lighter where they fell short of WCAG AA contrast (4.5:1) on the editor's
// backgrounds (comments, names and headings, keywords, line numbers).

import { EditorView } from '@codemirror/view';
import { Prec } from '@codemirror/state';
import { HighlightStyle, syntaxHighlighting } from '@codemirror/language';
import { tags as t } from '@lezer/highlight';
import { oneDarkTheme } from '@codemirror/theme-one-dark';

// Contrast on #282c34 / the active line #2c313a, all at least 5:1.
const coral = '#f08a92';
const stone = '#9aa4b4';
const violet = '#d68ee8';
const malibu = '#7cbcf3';
const cyan = '#6cc4cf';
const whiskey = '#d19a66';
const chalky = '#e5c07b';
const sage = '#98c379';
const ivory = '#abb2bf';

const highlight = HighlightStyle.define([
  { tag: t.keyword, color: violet },
  { tag: [t.name, t.deleted, t.character, t.propertyName, t.macroName], color: coral },
  { tag: [t.function(t.variableName), t.labelName], color: malibu },
  { tag: [t.color, t.constant(t.name), t.standard(t.name)], color: whiskey },
  { tag: [t.definition(t.name), t.separator], color: ivory },
  { tag: [t.typeName, t.className, t.number, t.changed, t.annotation, t.modifier, t.self, t.namespace], color: chalky },
  { tag: [t.operator, t.operatorKeyword, t.url, t.escape, t.regexp, t.link, t.special(t.string)], color: cyan },
  { tag: [t.meta, t.comment], color: stone },
  { tag: t.strong, fontWeight: 'bold' },
  { tag: t.emphasis, fontStyle: 'italic' },
  { tag: t.strikethrough, textDecoration: 'line-through' },
  { tag: t.link, color: stone, textDecoration: 'underline' },
  { tag: t.heading, fontWeight: 'bold', color: coral },
  { tag: [t.atom, t.bool, t.special(t.variableName)], color: whiskey },
  { tag: [t.processingInstruction, t.string, t.inserted], color: sage },
  { tag: t.invalid, color: '#ffffff' },
]);

export const editorTheme = [
  oneDarkTheme,
  syntaxHighlighting(highlight),
  // Ahead of One Dark's own gutter colour.
  Prec.highest(
    EditorView.theme(
      {
        '.cm-gutters': { color: stone },
        '.cm-activeLineGutter': { color: '#d6deeb' },
      },
      { dark: true },
    ),
  ),
  // The content is the editor's one Tab stop (explicitly, so that checkers
  // see the scrolling area has focusable content), read-only ones included.
  EditorView.contentAttributes.of({ tabindex: '0' }),
];
