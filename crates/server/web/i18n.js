// Texts of the web client: French by default, English available.
// `t(key, vars)` fills `{name}` placeholders; `applyI18n(root)` sets the text of
// every `[data-i18n]`, the `aria-label` of every `[data-i18n-label]` and the
// placeholder of every `[data-i18n-placeholder]`.

const TEXTS = {
  fr: {
    app_name: 'Mesh',
    language: 'Langue',
    welcome: 'Bienvenue sur Mesh',
    login: 'Se connecter',
    register: 'Créer un compte',
    username: "Nom d'utilisateur",
    password: 'Mot de passe',
    display_name: 'Nom affiché (facultatif)',
    logout: 'Se déconnecter',
    settings: 'Notifications',
    back: 'Retour',
    rooms: 'Salons',
    no_rooms: 'Aucun salon pour le moment.',
    new_room: 'Nouveau salon',
    create: 'Créer',
    invitations: 'Invitations',
    no_invites: 'Aucune invitation.',
    invite_from: '{from} vous invite dans « {room} »',
    accept: 'Accepter',
    decline: 'Refuser',
    pick_room: 'Choisissez un salon ou créez-en un.',
    invite_user: 'Inviter quelqu’un (nom d’utilisateur)',
    invite: 'Inviter',
    invited: 'Invitation envoyée à {user}.',
    older: 'Messages plus anciens',
    message: 'Message',
    send: 'Envoyer',
    share_file: 'Partager un fichier',
    file_shared: 'a partagé {name} ({size})',
    download: 'Recevoir le fichier',
    downloading: 'Réception… {pct} %',
    save_file: 'Enregistrer {name}',
    sender_offline: 'L’expéditeur n’est pas en ligne',
    transfer_failed: 'Transfert interrompu',
    unread: '{n} non lus',
    online: '{n} en ligne',
    members: 'Membres',
    you: 'vous',
    call_audio: 'Appel audio',
    call_video: 'Appel vidéo',
    call_with: 'Appeler',
    calling: 'Appel de {user}…',
    incoming_call: 'Appel entrant de {user}',
    call_connected: 'En communication avec {user}',
    call_offline: '{user} n’est pas en ligne : une notification lui a été envoyée.',
    call_ended: 'Appel terminé.',
    call_declined: 'Appel refusé.',
    hang_up: 'Raccrocher',
    local_video: 'Ma caméra',
    remote_video: 'Vidéo de l’interlocuteur',
    media_denied: 'Caméra ou micro indisponible : {error}',
    connected: 'Connecté',
    reconnecting: 'Connexion perdue, reconnexion…',
    notif_title: 'Notifications',
    notif_intro: 'Quand vous n’êtes pas dans un salon, Mesh vous prévient par ces moyens.',
    addresses: 'Mes moyens de notification',
    no_addresses: 'Aucun : le fournisseur par défaut du serveur est utilisé.',
    delete: 'Supprimer',
    verified: 'vérifiée',
    unverified: 'à vérifier',
    gotify_token: 'Jeton d’application Gotify',
    add: 'Ajouter',
    email: 'Adresse e-mail',
    email_code: 'Code reçu par e-mail',
    verify: 'Vérifier',
    code_sent: 'Un code a été envoyé à {to}.',
    email_verified: 'Adresse vérifiée.',
    webpush: 'Notifications du navigateur',
    webpush_enable: 'Activer sur ce navigateur',
    webpush_unsupported: 'Ce navigateur ne prend pas en charge les notifications push.',
    webpush_done: 'Notifications activées sur ce navigateur.',
    test_push: 'Envoyer une notification de test',
    test_push_sent: 'Notification de test envoyée.',
    preferences: 'Préférences',
    pref_language: 'Langue des notifications',
    quiet_hours: 'Heures calmes',
    quiet_enabled: 'Activer les heures calmes',
    quiet_start: 'Début',
    quiet_end: 'Fin',
    timezone: 'Fuseau horaire',
    allow_calls: 'Laisser passer les appels',
    muted_rooms: 'Salons en sourdine',
    file_by_email: 'Fichiers partagés : par e-mail uniquement',
    save: 'Enregistrer',
    saved: 'Enregistré.',
    close: 'Fermer',
    error: 'Erreur : {message}',
  },
  en: {
    app_name: 'Mesh',
    language: 'Language',
    welcome: 'Welcome to Mesh',
    login: 'Log in',
    register: 'Create an account',
    username: 'Username',
    password: 'Password',
    display_name: 'Display name (optional)',
    logout: 'Log out',
    settings: 'Notifications',
    back: 'Back',
    rooms: 'Rooms',
    no_rooms: 'No rooms yet.',
    new_room: 'New room',
    create: 'Create',
    invitations: 'Invitations',
    no_invites: 'No invitations.',
    invite_from: '{from} invites you to “{room}”',
    accept: 'Accept',
    decline: 'Decline',
    pick_room: 'Pick a room or create one.',
    invite_user: 'Invite someone (username)',
    invite: 'Invite',
    invited: 'Invitation sent to {user}.',
    older: 'Older messages',
    message: 'Message',
    send: 'Send',
    share_file: 'Share a file',
    file_shared: 'shared {name} ({size})',
    download: 'Receive the file',
    downloading: 'Receiving… {pct} %',
    save_file: 'Save {name}',
    sender_offline: 'The sender is not online',
    transfer_failed: 'Transfer interrupted',
    unread: '{n} unread',
    online: '{n} online',
    members: 'Members',
    you: 'you',
    call_audio: 'Audio call',
    call_video: 'Video call',
    call_with: 'Call',
    calling: 'Calling {user}…',
    incoming_call: 'Incoming call from {user}',
    call_connected: 'In a call with {user}',
    call_offline: '{user} is not online: they were sent a notification.',
    call_ended: 'Call ended.',
    call_declined: 'Call declined.',
    hang_up: 'Hang up',
    local_video: 'My camera',
    remote_video: 'Other side’s video',
    media_denied: 'Camera or microphone unavailable: {error}',
    connected: 'Connected',
    reconnecting: 'Connection lost, reconnecting…',
    notif_title: 'Notifications',
    notif_intro: 'When you are not in a room, Mesh reaches you through these.',
    addresses: 'My notification addresses',
    no_addresses: 'None: the server’s default provider is used.',
    delete: 'Delete',
    verified: 'verified',
    unverified: 'to verify',
    gotify_token: 'Gotify application token',
    add: 'Add',
    email: 'Email address',
    email_code: 'Code received by email',
    verify: 'Verify',
    code_sent: 'A code was sent to {to}.',
    email_verified: 'Address verified.',
    webpush: 'Browser notifications',
    webpush_enable: 'Enable in this browser',
    webpush_unsupported: 'This browser does not support push notifications.',
    webpush_done: 'Notifications enabled in this browser.',
    test_push: 'Send a test notification',
    test_push_sent: 'Test notification sent.',
    preferences: 'Preferences',
    pref_language: 'Notification language',
    quiet_hours: 'Quiet hours',
    quiet_enabled: 'Enable quiet hours',
    quiet_start: 'Start',
    quiet_end: 'End',
    timezone: 'Time zone',
    allow_calls: 'Let calls through',
    muted_rooms: 'Muted rooms',
    file_by_email: 'Shared files: by email only',
    save: 'Save',
    saved: 'Saved.',
    close: 'Close',
    error: 'Error: {message}',
  },
};

export const LANGUAGES = ['fr', 'en'];

let current = LANGUAGES.includes(localStorage.getItem('mesh.lang'))
  ? localStorage.getItem('mesh.lang')
  : 'fr';

export function language() {
  return current;
}

export function setLanguage(lang) {
  if (!LANGUAGES.includes(lang)) return;
  current = lang;
  localStorage.setItem('mesh.lang', lang);
  document.documentElement.lang = lang;
  applyI18n(document);
}

export function t(key, vars = {}) {
  const text = TEXTS[current][key] ?? TEXTS.fr[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

export function applyI18n(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nLabel));
    el.title = t(el.dataset.i18nLabel);
  }
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
}

export function formatSize(bytes) {
  const units = current === 'fr' ? ['o', 'Ko', 'Mo', 'Go'] : ['B', 'KB', 'MB', 'GB'];
  let n = Number(bytes) || 0;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function formatTime(ms) {
  return new Date(ms).toLocaleString(current === 'fr' ? 'fr-FR' : 'en-GB', {
    hour: '2-digit',
    minute: '2-digit',
    day: '2-digit',
    month: '2-digit',
  });
}
