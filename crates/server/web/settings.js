// Notification settings: Gotify app tokens, email addresses (with their
// verification code), Web Push where the browser supports it, a test push, and
// the preferences (`GET/PUT /api/me/preferences`) when the server has them.

import { api, ApiError } from './api.js';
import { setLanguage, t } from './i18n.js';

const $ = (id) => document.getElementById(id);

function urlBase64ToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

export class Settings {
  constructor(ui) {
    this.ui = ui;
    this.verifying = null;
    this.prefs = null;
    $('gotify-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.addGotify().catch(ui.showError);
    });
    $('email-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.addEmail().catch((err) => this.result('email-result', err));
    });
    $('verify-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.verify().catch((err) => this.result('email-result', err));
    });
    $('test-push').addEventListener('click', () => {
      this.testPush().catch((err) => this.result('test-push-result', err));
    });
    $('webpush-subscribe').addEventListener('click', () => {
      this.subscribe().catch((err) => this.result('webpush-result', err));
    });
    $('prefs-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.savePrefs().catch((err) => this.result('prefs-result', err));
    });
    $('webpush-section').hidden = !('serviceWorker' in navigator && 'PushManager' in window);
    if ($('webpush-section').hidden) $('webpush-result').textContent = t('webpush_unsupported');
  }

  result(id, what) {
    const p = $(id);
    if (what instanceof Error) {
      p.textContent = t('error', { message: what.message });
      p.dataset.kind = 'error';
    } else {
      p.textContent = what;
      p.dataset.kind = 'ok';
    }
  }

  async open() {
    await Promise.all([this.loadAddresses(), this.loadPrefs()]);
  }

  async loadAddresses() {
    const { addresses } = await api('GET', '/api/me/addresses');
    const list = $('address-list');
    list.replaceChildren();
    for (const a of addresses) {
      const li = document.createElement('li');
      li.dataset.addressId = a.id;
      li.dataset.kind = a.kind;
      const label = document.createElement('span');
      label.textContent = `${a.kind} · ${a.value} · ${a.verified ? t('verified') : t('unverified')}`;
      const del = document.createElement('button');
      del.type = 'button';
      del.className = 'secondary delete-address';
      del.textContent = t('delete');
      del.setAttribute('aria-label', `${t('delete')} ${a.kind} ${a.value}`);
      del.addEventListener('click', async () => {
        try {
          await api('DELETE', `/api/me/addresses/${a.id}`);
          await this.loadAddresses();
        } catch (err) {
          this.ui.showError(err);
        }
      });
      li.append(label, del);
      list.append(li);
    }
    $('no-addresses').hidden = addresses.length > 0;
  }

  async addGotify() {
    const value = $('gotify-token').value.trim();
    await api('POST', '/api/me/addresses', { kind: 'gotify', value });
    $('gotify-token').value = '';
    await this.loadAddresses();
  }

  async addEmail() {
    const value = $('email-address').value.trim();
    const res = await api('POST', '/api/me/addresses', { kind: 'email', value });
    if (res.address.verified) {
      this.result('email-result', t('email_verified'));
    } else {
      this.verifying = res.address.id;
      $('verify-form').hidden = false;
      $('email-code').focus();
      this.result('email-result', t('code_sent', { to: res.verification.sent_to }));
    }
    await this.loadAddresses();
  }

  async verify() {
    if (!this.verifying) return;
    await api('POST', `/api/me/addresses/${this.verifying}/verify`, { code: $('email-code').value.trim() });
    this.verifying = null;
    $('verify-form').hidden = true;
    $('email-code').value = '';
    $('email-address').value = '';
    this.result('email-result', t('email_verified'));
    await this.loadAddresses();
  }

  async testPush() {
    await api('POST', '/api/me/test-push');
    this.result('test-push-result', t('test_push_sent'));
  }

  async subscribe() {
    const { public_key: key } = await api('GET', '/api/webpush/key');
    const registration = await navigator.serviceWorker.register('/sw.js');
    const subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: urlBase64ToBytes(key),
    });
    await api('POST', '/api/me/addresses', { kind: 'webpush', value: JSON.stringify(subscription.toJSON()) });
    this.result('webpush-result', t('webpush_done'));
    await this.loadAddresses();
  }

  // ------------------------------------------------------------ preferences

  async loadPrefs() {
    let prefs;
    try {
      prefs = await api('GET', '/api/me/preferences');
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
        $('prefs-form').hidden = true;
        return;
      }
      throw e;
    }
    this.prefs = prefs;
    $('prefs-form').hidden = false;
    $('pref-language').value = prefs.language === 'en' ? 'en' : 'fr';
    const quiet = prefs.quiet_hours;
    $('quiet-enabled').checked = Boolean(quiet);
    $('quiet-start').value = quiet?.start ?? '22:00';
    $('quiet-end').value = quiet?.end ?? '07:30';
    $('quiet-timezone').value = quiet?.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC';
    $('quiet-allow-calls').checked = quiet ? quiet.allow_calls !== false : true;
    const fileRoute = prefs.routes?.file;
    $('file-by-email').checked = Array.isArray(fileRoute) && fileRoute.length === 1 && fileRoute[0] === 'smtp';
    const muted = prefs.muted_rooms || {};
    const list = $('muted-rooms');
    list.replaceChildren();
    for (const room of this.ui.rooms()) {
      const li = document.createElement('li');
      const label = document.createElement('label');
      label.className = 'check';
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.dataset.roomId = room.id;
      box.checked = Object.prototype.hasOwnProperty.call(muted, String(room.id));
      const name = document.createElement('span');
      name.textContent = room.name;
      label.append(box, ' ', name);
      li.append(label);
      list.append(li);
    }
  }

  async savePrefs() {
    const old = this.prefs || {};
    const mutedBefore = old.muted_rooms || {};
    const muted = {};
    for (const box of $('muted-rooms').querySelectorAll('input[type=checkbox]')) {
      if (box.checked) muted[box.dataset.roomId] = mutedBefore[box.dataset.roomId] ?? null;
    }
    const routes = { ...(old.routes || {}) };
    if ($('file-by-email').checked) routes.file = ['smtp'];
    else delete routes.file;
    const body = {
      language: $('pref-language').value,
      muted_rooms: muted,
      quiet_hours: $('quiet-enabled').checked
        ? {
            start: $('quiet-start').value,
            end: $('quiet-end').value,
            timezone: $('quiet-timezone').value.trim() || 'UTC',
            allow_calls: $('quiet-allow-calls').checked,
          }
        : null,
      routes,
    };
    this.prefs = (await api('PUT', '/api/me/preferences', body)) || body;
    setLanguage(body.language);
    $('lang').value = body.language;
    this.result('prefs-result', t('saved'));
  }
}
