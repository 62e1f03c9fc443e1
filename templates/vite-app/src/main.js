import './style.css';
import { message } from './message.js';

let updates = 0;

function render(text) {
  document.getElementById('message').textContent = text;
  document.getElementById('updates').textContent = String(updates);
}

document.getElementById('loaded-at').textContent = new Date().toLocaleTimeString();
render(message);

// Swap in a new message.js without reloading the page.
if (import.meta.hot) {
  import.meta.hot.accept('./message.js', (mod) => {
    if (!mod) return;
    updates += 1;
    render(mod.message);
  });
}
