// The job's desktop: noVNC's RFB client on the server's WebSocket relay, scaled to the window,
// reconnecting with backoff after a drop. The WebSocket URL is relative to this page, so the page
// works at the server's /desktop/{id}/ and behind `agent desktop --listen`.
import RFB from './novnc/core/rfb.js';

const body = document.body;
const viewOnly = body.dataset.viewOnly === 'true';
const stateEl = document.getElementById('state');
const screen = document.getElementById('screen');
document.getElementById('mode').textContent = viewOnly ? 'view only' : '';

const MIN_DELAY = 500;
const MAX_DELAY = 10000;
let delay = MIN_DELAY;
let attempts = 0;

function socketUrl() {
  const url = new URL('websockify', window.location.href);
  url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = '';
  url.hash = '';
  return url.href;
}

function setState(state, text) {
  body.dataset.state = state;
  stateEl.textContent = text;
}

function connect() {
  attempts += 1;
  setState('connecting', attempts > 1 ? `reconnecting (attempt ${attempts})…` : 'connecting…');
  const rfb = new RFB(screen, socketUrl(), { shared: true, wsProtocols: ['binary'] });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.viewOnly = viewOnly;
  rfb.background = '#111';
  rfb.addEventListener('connect', () => {
    delay = MIN_DELAY;
    attempts = 0;
    setState('connected', 'connected');
  });
  rfb.addEventListener('disconnect', (e) => {
    const wait = delay;
    delay = Math.min(delay * 2, MAX_DELAY);
    setState('disconnected', `${e.detail.clean ? 'disconnected' : 'connection lost'}; retrying in ${Math.round(wait / 1000)} s`);
    window.setTimeout(connect, wait);
  });
  rfb.addEventListener('desktopname', (e) => { document.title = `${e.detail.name} — job ${body.dataset.job}`; });
  window.agentRfb = rfb;
}

connect();
