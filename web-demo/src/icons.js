// Inline SVG icons (stroke style, 16px), so the page needs no icon font and
// renders the same on a machine without emoji fonts.

const PATHS = {
  folder: '<path d="M1.5 4.5a1 1 0 0 1 1-1h3.6l1.4 1.5h6a1 1 0 0 1 1 1v6.5a1 1 0 0 1-1 1h-11a1 1 0 0 1-1-1z"/>',
  folderPlus: '<path d="M1.5 4.5a1 1 0 0 1 1-1h3.6l1.4 1.5h6a1 1 0 0 1 1 1v6.5a1 1 0 0 1-1 1h-11a1 1 0 0 1-1-1z"/><path d="M8 7.5v4M6 9.5h4"/>',
  file: '<path d="M4 1.5h5l3.5 3.5v9a.5.5 0 0 1-.5.5H4a.5.5 0 0 1-.5-.5v-12a.5.5 0 0 1 .5-.5z"/><path d="M9 1.5V5h3.5"/>',
  filePlus: '<path d="M4 1.5h5l3.5 3.5v9a.5.5 0 0 1-.5.5H4a.5.5 0 0 1-.5-.5v-12a.5.5 0 0 1 .5-.5z"/><path d="M8 7.5v4M6 9.5h4"/>',
  trash: '<path d="M2.5 4h11M6 4V2.5h4V4M4 4l.7 9.5h6.6L12 4"/>',
  pencil: '<path d="M10.5 2.5l3 3-8 8H2.5v-3z"/>',
  plus: '<path d="M8 3v10M3 8h10"/>',
  refresh: '<path d="M13 8a5 5 0 1 1-1.5-3.5M13 2.5V5h-2.5"/>',
  download: '<path d="M8 2v8M4.5 6.5L8 10l3.5-3.5M2.5 13.5h11"/>',
  upload: '<path d="M8 10V2M4.5 5.5L8 2l3.5 3.5M2.5 13.5h11"/>',
  folderUp: '<path d="M1.5 4.5a1 1 0 0 1 1-1h3.6l1.4 1.5h6a1 1 0 0 1 1 1v6.5a1 1 0 0 1-1 1h-11a1 1 0 0 1-1-1z"/><path d="M8 11.5v-4M6 9.5l2-2 2 2"/>',
  close: '<path d="M4 4l8 8M12 4l-8 8"/>',
  back: '<path d="M10 3L5 8l5 5"/>',
  forward: '<path d="M6 3l5 5-5 5"/>',
  enter: '<path d="M13 3v5H4M7 5L4 8l3 3"/>',
  keyboard: '<rect x="1.5" y="4" width="13" height="8" rx="1"/><path d="M4 6.5h1M7 6.5h2M11 6.5h1M4 9.5h8"/>',
  image: '<rect x="2" y="2.5" width="12" height="11" rx="1"/><circle cx="5.5" cy="6" r="1.2"/><path d="M2.5 12l3.5-3.5 2.5 2.5 2-2 3 3"/>',
  external: '<path d="M9 2.5h4.5V7M13.5 2.5L7.5 8.5M11.5 9.5v4h-9v-9h4"/>',
};

export function icon(name) {
  const span = document.createElement('span');
  span.className = 'i';
  span.setAttribute('aria-hidden', 'true');
  span.innerHTML = `<svg viewBox="0 0 16 16" width="14" height="14" fill="none" stroke="currentColor" stroke-width="1.3" stroke-linecap="round" stroke-linejoin="round">${PATHS[name]}</svg>`;
  return span;
}

/** Replaces the content of every element with data-icon="name" by that icon. */
export function hydrateIcons(root = document) {
  for (const el of root.querySelectorAll('[data-icon]')) el.replaceChildren(icon(el.dataset.icon));
}
