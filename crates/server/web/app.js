// The Mesh web client: accounts, rooms (unread counts, presence), invitations,
// chat with history paging and live messages, calls and file transfers
// (call.js), notification settings (settings.js).
//
// User data is only ever put into the page with `textContent` or as attribute
// values, never parsed as HTML.

import { api, ApiError, EventSocket, sessionToken, setSessionToken } from './api.js';
import { applyI18n, formatSize, formatTime, language, setLanguage, t } from './i18n.js';
import { Calls } from './call.js';
import { Settings } from './settings.js';

const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  /** room id → {id, name, members: [user], present: Set<user id>, unread} */
  rooms: new Map(),
  current: null,
  nextBefore: null,
  /** message id → <li> of the open room */
  shown: new Map(),
  /** client_id → <li> sent but not yet acknowledged */
  pending: new Map(),
};

/** Creates an element with text content and attributes (never HTML). */
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'type' || k === 'title') e.setAttribute(k, v);
    else e[k] = v;
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

let noticeTimer = null;
function notice(text, kind = 'info') {
  const n = $('notice');
  n.textContent = text;
  n.dataset.kind = kind;
  n.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    n.hidden = true;
  }, 6000);
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401 && state.user) {
    logout(false);
    return;
  }
  notice(t('error', { message: e.message || String(e) }), 'error');
}

function screen(name) {
  document.body.dataset.screen = name;
}

// ---------------------------------------------------------------- read marks

function readMarks() {
  try {
    return JSON.parse(localStorage.getItem(`mesh.read.${state.user.id}`) || '{}');
  } catch {
    return {};
  }
}

function markRead(roomId, messageId) {
  const marks = readMarks();
  if ((marks[roomId] || 0) >= messageId) return;
  marks[roomId] = messageId;
  localStorage.setItem(`mesh.read.${state.user.id}`, JSON.stringify(marks));
}

// ---------------------------------------------------------------- socket

const socket = new EventSocket(onEvent, onSocketState);
const calls = new Calls(socket, {
  notice,
  roomOf: (id) => state.rooms.get(id),
  openRoom: (id) => openRoom(id),
  isOnline: (roomId, userId) => state.rooms.get(roomId)?.present.has(userId) ?? false,
});
const settings = new Settings({ notice, showError, rooms: () => [...state.rooms.values()] });

function onSocketState(s) {
  document.body.dataset.ws = s;
  if (s === 'open') {
    $('ws-state').textContent = '';
    for (const room of state.rooms.values()) join(room.id);
  } else if (s === 'unauthorized') {
    logout(false);
  } else {
    $('ws-state').textContent = t('reconnecting');
    for (const room of state.rooms.values()) room.present.clear();
    renderRooms();
    renderMembers();
    calls.socketLost();
  }
}

function join(roomId) {
  socket.send({ type: 'room.join', room_id: roomId });
}

function onEvent(ev) {
  switch (ev.type) {
    case 'ack':
      onAck(ev);
      break;
    case 'error':
      onErrorEvent(ev);
      break;
    case 'chat.message':
    case 'file.shared':
      onMessage(ev.message);
      break;
    case 'presence': {
      const room = state.rooms.get(ev.room_id);
      if (!room) break;
      if (ev.status === 'joined') {
        room.present.add(ev.user.id);
        // A new member (an invitation accepted since the rooms were listed).
        if (ev.user.id !== state.user.id && !room.members.some((m) => m.id === ev.user.id)) {
          room.members.push(ev.user);
        }
      } else {
        room.present.delete(ev.user.id);
      }
      renderRooms();
      if (state.current === ev.room_id) renderMembers();
      break;
    }
    case 'room.invited':
      loadInvites().catch(showError);
      break;
    case 'room.left':
      state.rooms.delete(ev.room_id);
      if (state.current === ev.room_id) closeRoom();
      renderRooms();
      break;
    case 'rtc.offer':
    case 'rtc.answer':
    case 'rtc.ice':
    case 'rtc.hangup':
      calls.onRtc(ev);
      break;
    default:
      break;
  }
}

function onAck(ev) {
  if (ev.for === 'room.join') {
    const room = state.rooms.get(ev.room.id);
    if (room) {
      room.present = new Set(ev.present);
      renderRooms();
      if (state.current === room.id) renderMembers();
    }
  } else if (ev.for === 'chat.message.send' || ev.for === 'file.share') {
    const li = state.pending.get(ev.client_id);
    if (li) {
      state.pending.delete(ev.client_id);
      li.classList.remove('pending');
      if (!state.shown.has(ev.message_id)) {
        li.dataset.messageId = ev.message_id;
        state.shown.set(ev.message_id, li);
      } else {
        li.remove();
      }
    }
    if (ev.for === 'file.share') calls.fileAcked(ev.client_id, ev.message_id);
  } else if (ev.for === 'rtc.offer') {
    calls.offerAcked(ev);
  }
}

function onErrorEvent(ev) {
  if (ev.client_id && state.pending.has(ev.client_id)) {
    const li = state.pending.get(ev.client_id);
    state.pending.delete(ev.client_id);
    li.classList.remove('pending');
    li.classList.add('failed');
    li.dataset.error = ev.code;
  }
  if (ev.for === 'rtc.ice' || ev.for === 'rtc.hangup' || ev.for === 'rtc.answer') {
    calls.signalFailed(ev);
    return;
  }
  notice(t('error', { message: ev.message }), 'error');
}

// ---------------------------------------------------------------- auth

async function login(username, password) {
  const res = await api('POST', '/api/login', { username, password });
  setSessionToken(res.token);
  state.user = res.user;
  await enterHome();
}

async function logout(callServer = true) {
  calls.hangUpAll();
  socket.stop();
  if (callServer && sessionToken()) {
    try {
      await api('POST', '/api/logout');
    } catch {
      // Gone already: nothing to end.
    }
  }
  setSessionToken(null);
  state.user = null;
  state.rooms.clear();
  state.current = null;
  $('me').textContent = '';
  closeRoom();
  screen('auth');
}

async function enterHome() {
  $('me').textContent = state.user.display_name;
  screen('home');
  await Promise.all([loadRooms(), loadInvites()]);
  socket.start();
  countUnread().catch(() => {});
  const last = Number(localStorage.getItem(`mesh.room.${state.user.id}`));
  if (last && state.rooms.has(last) && window.matchMedia('(min-width: 700px)').matches) {
    await openRoom(last);
  }
}

// ---------------------------------------------------------------- rooms

async function loadRooms() {
  const { rooms } = await api('GET', '/api/rooms');
  const known = state.rooms;
  state.rooms = new Map();
  for (const r of rooms) {
    const old = known.get(r.id);
    state.rooms.set(r.id, {
      id: r.id,
      name: r.name,
      // The API lists every member, this user too.
      members: r.members.filter((m) => m.id !== state.user.id),
      present: old ? old.present : new Set(),
      unread: old ? old.unread : 0,
    });
  }
  renderRooms();
  if (state.current && !state.rooms.has(state.current)) closeRoom();
}

/** Unread counts at start: messages after the last one read, per room (up to 50). */
async function countUnread() {
  const marks = readMarks();
  await Promise.all(
    [...state.rooms.values()].map(async (room) => {
      if (room.id === state.current) return;
      const { messages } = await api('GET', `/api/rooms/${room.id}/messages?limit=50`);
      room.unread = messages.filter((m) => m.id > (marks[room.id] || 0) && m.user_id !== state.user.id).length;
    }),
  );
  renderRooms();
}

function renderRooms() {
  const list = $('room-list');
  list.replaceChildren();
  for (const room of state.rooms.values()) {
    const online = room.members.filter((m) => room.present.has(m.id)).length;
    const button = el('button', {
      type: 'button',
      class: 'room',
      'data-room-id': room.id,
      'aria-current': room.id === state.current ? 'true' : undefined,
    });
    button.append(el('span', { class: 'room-name' }, room.name));
    const meta = el('span', { class: 'room-meta' });
    meta.append(el('span', { class: online > 0 ? 'dot online' : 'dot', 'aria-hidden': 'true' }));
    meta.append(el('span', { class: 'online-count' }, t('online', { n: online })));
    if (room.unread > 0) {
      meta.append(el('span', { class: 'badge', 'data-unread': room.unread, 'aria-label': t('unread', { n: room.unread }) }, String(room.unread)));
    }
    button.append(meta);
    button.addEventListener('click', () => openRoom(room.id).catch(showError));
    const li = el('li');
    li.append(button);
    list.append(li);
  }
  $('no-rooms').hidden = state.rooms.size > 0;
}

function renderMembers() {
  const room = state.rooms.get(state.current);
  const list = $('member-list');
  list.replaceChildren();
  const select = $('call-peer');
  const chosen = select.value;
  select.replaceChildren();
  if (!room) return;
  const me = el('li', { class: 'member online', 'data-user-id': state.user.id });
  me.append(el('span', { class: 'dot online', 'aria-hidden': 'true' }), el('span', {}, `${state.user.display_name} (${t('you')})`));
  list.append(me);
  for (const m of room.members) {
    const on = room.present.has(m.id);
    const li = el('li', { class: on ? 'member online' : 'member', 'data-user-id': m.id, 'data-online': on ? 'true' : 'false' });
    li.append(el('span', { class: on ? 'dot online' : 'dot', 'aria-hidden': 'true' }), el('span', {}, m.display_name));
    list.append(li);
    select.append(el('option', { value: String(m.id) }, m.display_name));
  }
  if (chosen) select.value = chosen;
  const none = room.members.length === 0;
  $('call-audio').disabled = none;
  $('call-video').disabled = none;
  select.hidden = room.members.length < 2;
  // A file's "receive" button depends on its sender being online.
  for (const li of state.shown.values()) calls.refreshFile(li);
}

async function openRoom(id) {
  const room = state.rooms.get(id);
  if (!room) return;
  if (state.current !== id) {
    state.current = id;
    state.shown.clear();
    state.pending.clear();
    state.nextBefore = null;
    $('messages').replaceChildren();
    $('room-title').textContent = room.name;
    $('chat-empty').hidden = true;
    $('chat-room').hidden = false;
    $('chat-room').dataset.roomId = id;
    localStorage.setItem(`mesh.room.${state.user.id}`, String(id));
    renderMembers();
    await loadHistory();
  }
  room.unread = 0;
  renderRooms();
  document.body.dataset.view = 'chat';
}

function closeRoom() {
  state.current = null;
  state.shown.clear();
  state.pending.clear();
  $('messages').replaceChildren();
  $('chat-room').hidden = true;
  $('chat-empty').hidden = false;
  document.body.dataset.view = 'rooms';
}

async function loadHistory() {
  const roomId = state.current;
  const before = state.nextBefore ? `&before=${state.nextBefore}` : '';
  const { messages, next_before: nextBefore } = await api('GET', `/api/rooms/${roomId}/messages?limit=30${before}`);
  if (roomId !== state.current) return;
  state.nextBefore = nextBefore;
  $('older').hidden = !nextBefore;
  const list = $('messages');
  const first = before === '';
  const height = list.scrollHeight;
  // Newest first from the server: prepend each, oldest ends on top.
  for (const m of messages) {
    if (state.shown.has(m.id)) continue;
    const li = renderMessage(m);
    state.shown.set(m.id, li);
    list.prepend(li);
  }
  if (first) {
    list.scrollTop = list.scrollHeight;
    if (messages.length > 0) markRead(roomId, messages[0].id);
  } else {
    list.scrollTop = list.scrollHeight - height;
  }
}

function renderMessage(m) {
  const mine = state.user && m.user_id === state.user.id;
  const li = el('li', {
    class: mine ? 'message mine' : 'message',
    'data-message-id': m.id,
    'data-user-id': m.user_id,
    'data-kind': m.kind,
  });
  const meta = el('div', { class: 'meta' });
  meta.append(el('span', { class: 'author' }, m.display_name));
  meta.append(el('time', { dateTime: new Date(m.created_at).toISOString() }, formatTime(m.created_at)));
  li.append(meta);
  if (m.kind === 'file' && m.file) {
    const body = el('div', { class: 'text file' });
    body.append(el('span', {}, t('file_shared', { name: m.file.name, size: formatSize(m.file.size) })));
    li.append(body);
    li.dataset.fileName = m.file.name;
    li.dataset.fileSize = m.file.size;
    li.dataset.fileMime = m.file.mime;
    if (!mine) calls.decorateFile(li, m);
  } else {
    li.append(el('div', { class: 'text' }, m.text));
  }
  return li;
}

function onMessage(m) {
  const room = state.rooms.get(m.room_id);
  if (!room) return;
  if (m.room_id !== state.current) {
    if (m.user_id !== state.user.id) room.unread += 1;
    renderRooms();
    return;
  }
  if (state.shown.has(m.id)) return;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const pending = m.client_id && m.user_id === state.user.id ? state.pending.get(m.client_id) : null;
  const li = renderMessage(m);
  if (pending) {
    state.pending.delete(m.client_id);
    pending.replaceWith(li);
  } else {
    list.append(li);
  }
  state.shown.set(m.id, li);
  if (document.visibilityState === 'visible') markRead(m.room_id, m.id);
  else if (m.user_id !== state.user.id) room.unread += 1;
  if (atBottom || m.user_id === state.user.id) list.scrollTop = list.scrollHeight;
  renderRooms();
}

function sendMessage() {
  const input = $('message-input');
  const text = input.value;
  if (!text.trim() || !state.current) return;
  const clientId = randomId();
  const event = { type: 'chat.message.send', room_id: state.current, text, client_id: clientId };
  if (!socket.send(event)) {
    notice(t('reconnecting'), 'error');
    return;
  }
  const li = renderMessage({
    id: 0,
    room_id: state.current,
    user_id: state.user.id,
    display_name: state.user.display_name,
    kind: 'chat',
    text,
    created_at: Date.now(),
  });
  li.classList.add('pending');
  li.dataset.clientId = clientId;
  li.removeAttribute('data-message-id');
  state.pending.set(clientId, li);
  $('messages').append(li);
  $('messages').scrollTop = $('messages').scrollHeight;
  input.value = '';
  input.focus();
}

function shareFile(file) {
  if (!file || !state.current) return;
  const clientId = randomId();
  calls.offerFile(clientId, file);
  const event = {
    type: 'file.share',
    room_id: state.current,
    name: file.name,
    size: file.size,
    mime: file.type || 'application/octet-stream',
    client_id: clientId,
  };
  if (!socket.send(event)) notice(t('reconnecting'), 'error');
}

// ---------------------------------------------------------------- invitations

async function loadInvites() {
  const { invites } = await api('GET', '/api/invites');
  const list = $('invite-list');
  list.replaceChildren();
  for (const inv of invites) {
    const li = el('li', { class: 'invite', 'data-invite-id': inv.id });
    li.append(el('p', {}, t('invite_from', { from: inv.from.display_name, room: inv.room_name })));
    const accept = el('button', { type: 'button', class: 'accept-invite' }, t('accept'));
    const decline = el('button', { type: 'button', class: 'decline-invite secondary' }, t('decline'));
    accept.addEventListener('click', () => answerInvite(inv, true).catch(showError));
    decline.addEventListener('click', () => answerInvite(inv, false).catch(showError));
    li.append(accept, decline);
    list.append(li);
  }
  $('no-invites').hidden = invites.length > 0;
}

async function answerInvite(inv, accept) {
  if (accept) {
    const { room } = await api('POST', `/api/invites/${inv.id}/accept`);
    await loadRooms();
    join(room.id);
    await loadInvites();
    await openRoom(room.id);
  } else {
    await api('POST', `/api/invites/${inv.id}/decline`);
    await loadInvites();
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('lang').value = language();
  $('lang').addEventListener('change', (e) => {
    setLanguage(e.target.value);
    if (!state.user) return;
    renderRooms();
    renderMembers();
    loadInvites().catch(() => {});
  });
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    login($('login-username').value.trim(), $('login-password').value).catch(showError);
  });
  $('register-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const username = $('register-username').value.trim();
    const password = $('register-password').value;
    const displayName = $('register-display-name').value.trim();
    try {
      const body = { username, password };
      if (displayName) body.display_name = displayName;
      await api('POST', '/api/register', body);
      await login(username, password);
    } catch (err) {
      showError(err);
    }
  });
  $('logout').addEventListener('click', () => logout(true));
  $('back').addEventListener('click', () => {
    if (document.body.dataset.screen === 'settings') screen('home');
    else document.body.dataset.view = 'rooms';
  });
  $('create-room-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const { room } = await api('POST', '/api/rooms', { name: $('new-room-name').value.trim() });
      $('new-room-name').value = '';
      await loadRooms();
      join(room.id);
      await openRoom(room.id);
    } catch (err) {
      showError(err);
    }
  });
  $('invite-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const username = $('invite-username').value.trim();
    try {
      await api('POST', `/api/rooms/${state.current}/invite`, { username });
      $('invite-username').value = '';
      notice(t('invited', { user: username }));
    } catch (err) {
      showError(err);
    }
  });
  $('older').addEventListener('click', () => loadHistory().catch(showError));
  $('send-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });
  $('message-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      sendMessage();
    }
  });
  $('file-input').addEventListener('change', (e) => {
    shareFile(e.target.files[0]);
    e.target.value = '';
  });
  const callPeer = () => {
    const room = state.rooms.get(state.current);
    if (!room) return null;
    const id = Number($('call-peer').value) || room.members[0]?.id;
    return room.members.find((m) => m.id === id) || null;
  };
  $('call-audio').addEventListener('click', () => {
    const peer = callPeer();
    if (peer) calls.start(state.current, peer, false);
  });
  $('call-video').addEventListener('click', () => {
    const peer = callPeer();
    if (peer) calls.start(state.current, peer, true);
  });
  $('open-settings').addEventListener('click', () => {
    screen('settings');
    settings.open().catch(showError);
  });
  $('close-settings').addEventListener('click', () => screen('home'));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible' || !state.current) return;
    const ids = [...state.shown.keys()];
    if (ids.length > 0) markRead(state.current, Math.max(...ids));
    const room = state.rooms.get(state.current);
    if (room) {
      room.unread = 0;
      renderRooms();
    }
  });
}

async function main() {
  applyI18n(document);
  document.documentElement.lang = language();
  wire();
  if (!sessionToken()) {
    screen('auth');
    return;
  }
  try {
    const { user } = await api('GET', '/api/me');
    state.user = user;
    await enterHome();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      setSessionToken(null);
      screen('auth');
    } else {
      screen('auth');
      showError(e);
    }
  }
}

main();
