// Service worker of the Mesh web client: shows Web Push notifications sent by
// mesh-notify's webpush provider and opens the room when one is clicked.

self.addEventListener('push', (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { title: 'Mesh', body: event.data ? event.data.text() : '' };
  }
  const title = data.title || 'Mesh';
  event.waitUntil(
    self.registration.showNotification(title, {
      body: data.body || data.message || '',
      tag: data.id || undefined,
      data: { url: '/' },
      icon: '/favicon.svg',
    }),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: 'window' }).then((windows) => {
      for (const w of windows) {
        if ('focus' in w) return w.focus();
      }
      return self.clients.openWindow('/');
    }),
  );
});
