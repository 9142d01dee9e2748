// Calls and file transfers over WebRTC, signalled with `rtc.offer`,
// `rtc.answer`, `rtc.ice` and `rtc.hangup` over the event WebSocket.
//
// A call's `call_id` is random; a file transfer's is `file:<message id>:<random>`
// and carries an RTCDataChannel instead of media: the receiver asks (offers), the
// sender's tab, which still holds the File, answers and streams it.

import { t, formatSize } from './i18n.js';

const $ = (id) => document.getElementById(id);
// Loopback and LAN peers connect on host candidates; no STUN/TURN is configured.
const RTC_CONFIG = { iceServers: [] };
const CHUNK = 16 * 1024;
const HIGH_WATER = 1024 * 1024;

function randomId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Applies remote ICE candidates once the remote description is set. */
class IceQueue {
  constructor() {
    this.pc = null;
    this.waiting = [];
  }

  async add(candidate) {
    if (!candidate) return;
    if (this.pc && this.pc.remoteDescription) {
      await this.pc.addIceCandidate(candidate).catch(() => {});
    } else {
      this.waiting.push(candidate);
    }
  }

  async ready(pc) {
    this.pc = pc;
    const waiting = this.waiting;
    this.waiting = [];
    for (const c of waiting) await pc.addIceCandidate(c).catch(() => {});
  }
}

export class Calls {
  constructor(socket, ui) {
    this.socket = socket;
    this.ui = ui;
    /** The one call: {id, roomId, peer, role, video, pc, stream, ice, offerSdp} */
    this.call = null;
    /** client_id → File, until the share is acknowledged */
    this.sharing = new Map();
    /** message id → File this tab can send */
    this.files = new Map();
    /** call_id → {pc, ice, peerId, roomId} file transfers in progress */
    this.transfers = new Map();
    $('accept-call').addEventListener('click', () => this.accept());
    $('decline-call').addEventListener('click', () => this.hangUp());
    $('hangup').addEventListener('click', () => this.hangUp());
  }

  // ------------------------------------------------------------ UI

  show(phase, text) {
    const panel = $('call-panel');
    panel.hidden = false;
    panel.dataset.phase = phase;
    $('call-status').textContent = text;
    $('accept-call').hidden = phase !== 'incoming';
    $('decline-call').hidden = phase !== 'incoming';
    $('hangup').hidden = phase === 'incoming' || phase === 'ended';
    panel.querySelector('.videos').hidden = phase === 'ended' || !this.call?.video;
  }

  setState(s) {
    $('call-panel').dataset.state = s;
  }

  // ------------------------------------------------------------ calls

  async start(roomId, peer, video) {
    if (this.call) return;
    const call = { id: `call-${randomId()}`, roomId, peer, role: 'caller', video, ice: new IceQueue() };
    this.call = call;
    this.setState('new');
    this.show('calling', t('calling', { user: peer.display_name }));
    if (!(await this.media(call))) return;
    const pc = this.peerConnection(call);
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (this.call !== call) return;
    this.socket.send({ type: 'rtc.offer', room_id: roomId, to: peer.id, sdp: offer.sdp, call_id: call.id });
  }

  async media(call) {
    try {
      call.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: call.video });
    } catch (e) {
      this.ui.notice(t('media_denied', { error: e.message || e.name }), 'error');
      this.end(true, t('call_ended'));
      return false;
    }
    if (this.call !== call) {
      call.stream.getTracks().forEach((tr) => tr.stop());
      return false;
    }
    $('local-video').srcObject = call.stream;
    return true;
  }

  peerConnection(call) {
    const pc = new RTCPeerConnection(RTC_CONFIG);
    call.pc = pc;
    for (const track of call.stream.getTracks()) pc.addTrack(track, call.stream);
    pc.addEventListener('icecandidate', (e) => {
      this.socket.send({
        type: 'rtc.ice',
        room_id: call.roomId,
        to: call.peer.id,
        candidate: e.candidate ? e.candidate.toJSON() : null,
        call_id: call.id,
      });
    });
    pc.addEventListener('track', (e) => {
      const remote = $('remote-video');
      remote.srcObject = e.streams[0] || new MediaStream([e.track]);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (this.call !== call) return;
      this.setState(pc.connectionState);
      if (pc.connectionState === 'connected') {
        this.show('connected', t('call_connected', { user: call.peer.display_name }));
      } else if (pc.connectionState === 'failed') {
        this.end(true, t('call_ended'));
      }
    });
    return pc;
  }

  async accept() {
    const call = this.call;
    if (!call || call.role !== 'callee' || call.pc) return;
    this.show('connecting', t('call_connected', { user: call.peer.display_name }));
    if (!(await this.media(call))) return;
    const pc = this.peerConnection(call);
    await pc.setRemoteDescription({ type: 'offer', sdp: call.offerSdp });
    await call.ice.ready(pc);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (this.call !== call) return;
    this.socket.send({ type: 'rtc.answer', room_id: call.roomId, to: call.peer.id, sdp: answer.sdp, call_id: call.id });
  }

  /** Hangs up (or declines) the current call and tells the peer. */
  hangUp() {
    this.end(true, this.call?.role === 'callee' && !this.call.pc ? t('call_declined') : t('call_ended'));
  }

  end(tellPeer, text) {
    const call = this.call;
    if (!call) return;
    this.call = null;
    if (tellPeer) {
      this.socket.send({ type: 'rtc.hangup', room_id: call.roomId, to: call.peer.id, call_id: call.id });
    }
    if (call.stream) call.stream.getTracks().forEach((tr) => tr.stop());
    if (call.pc) call.pc.close();
    $('local-video').srcObject = null;
    $('remote-video').srcObject = null;
    this.setState('ended');
    this.show('ended', text);
  }

  offerAcked(ack) {
    const call = this.call;
    if (ack.relayed === false && call && call.role === 'caller' && call.peer.id === ack.to) {
      // Offline: the server sent them a call notification instead.
      this.end(false, t('call_offline', { user: call.peer.display_name }));
    }
  }

  signalFailed(ev) {
    // The peer went away mid-call; its own side ends by itself.
    if (ev.code === 'peer_offline' && this.call && ev.for === 'rtc.answer') this.end(false, t('call_ended'));
  }

  socketLost() {
    // Signalling is gone; an established call keeps its media path.
    if (this.call && !this.call.pc) this.end(false, t('call_ended'));
  }

  hangUpAll() {
    this.end(true, t('call_ended'));
    for (const [id, tr] of this.transfers) {
      tr.pc.close();
      this.transfers.delete(id);
    }
  }

  onRtc(ev) {
    if (typeof ev.call_id === 'string' && ev.call_id.startsWith('file:')) {
      this.onFileSignal(ev);
      return;
    }
    const call = this.call;
    switch (ev.type) {
      case 'rtc.offer':
        if (call) {
          if (call.id !== ev.call_id) {
            this.socket.send({ type: 'rtc.hangup', room_id: ev.room_id, to: ev.from.id, call_id: ev.call_id });
          }
          return;
        }
        this.call = {
          id: ev.call_id,
          roomId: ev.room_id,
          peer: ev.from,
          role: 'callee',
          video: /\bm=video /.test(ev.sdp),
          offerSdp: ev.sdp,
          ice: new IceQueue(),
        };
        Promise.resolve(this.ui.openRoom(ev.room_id)).finally(() => {
          if (this.call && this.call.id === ev.call_id) {
            this.setState('new');
            this.show('incoming', t('incoming_call', { user: ev.from.display_name }));
          }
        });
        break;
      case 'rtc.answer':
        if (call && call.id === ev.call_id && call.role === 'caller' && call.pc) {
          call.pc
            .setRemoteDescription({ type: 'answer', sdp: ev.sdp })
            .then(() => call.ice.ready(call.pc))
            .catch(() => this.end(true, t('call_ended')));
          this.show('connecting', t('calling', { user: call.peer.display_name }));
        }
        break;
      case 'rtc.ice':
        if (call && call.id === ev.call_id) call.ice.add(ev.candidate);
        break;
      case 'rtc.hangup':
        if (call && call.id === ev.call_id) {
          this.end(false, call.role === 'caller' && !call.pc?.remoteDescription ? t('call_declined') : t('call_ended'));
        }
        break;
      default:
        break;
    }
  }

  // ------------------------------------------------------------ files

  /** Keeps the file until the server acknowledges its share. */
  offerFile(clientId, file) {
    this.sharing.set(clientId, file);
  }

  fileAcked(clientId, messageId) {
    const file = this.sharing.get(clientId);
    if (!file) return;
    this.sharing.delete(clientId);
    this.files.set(String(messageId), file);
  }

  /** Adds the "receive" button to a file message from someone else. */
  decorateFile(li, m) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'receive-file secondary';
    button.textContent = t('download');
    button.addEventListener('click', () => this.receive(li, m));
    const status = document.createElement('span');
    status.className = 'transfer-status';
    status.setAttribute('role', 'status');
    li.append(button, status);
    li.dataset.senderId = m.user_id;
    li.dataset.roomId = m.room_id;
    this.refreshFile(li);
  }

  refreshFile(li) {
    const button = li.querySelector('.receive-file');
    if (!button || li.dataset.transfer === 'done') return;
    const online = this.ui.isOnline(Number(li.dataset.roomId), Number(li.dataset.senderId));
    button.disabled = !online;
    button.title = online ? '' : t('sender_offline');
  }

  async receive(li, m) {
    if (!this.ui.isOnline(m.room_id, m.user_id)) {
      this.ui.notice(t('sender_offline'), 'error');
      return;
    }
    const id = `file:${m.id}:${randomId()}`;
    const pc = new RTCPeerConnection(RTC_CONFIG);
    const ice = new IceQueue();
    this.transfers.set(id, { pc, ice, peerId: m.user_id, roomId: m.room_id, li });
    const status = li.querySelector('.transfer-status');
    const button = li.querySelector('.receive-file');
    button.disabled = true;
    li.dataset.transfer = 'connecting';
    const channel = pc.createDataChannel('file', { ordered: true });
    channel.binaryType = 'arraybuffer';
    const chunks = [];
    let received = 0;
    const size = Number(m.file.size);
    channel.addEventListener('message', (e) => {
      if (typeof e.data === 'string') {
        if (e.data !== 'done') return;
        const blob = new Blob(chunks, { type: m.file.mime });
        const link = document.createElement('a');
        link.href = URL.createObjectURL(blob);
        link.download = m.file.name;
        link.className = 'save-file';
        link.textContent = t('save_file', { name: m.file.name });
        status.textContent = formatSize(received);
        button.remove();
        li.append(link);
        li.dataset.transfer = 'done';
        li.dataset.receivedBytes = String(received);
        this.finishTransfer(id, false);
        return;
      }
      chunks.push(e.data);
      received += e.data.byteLength;
      li.dataset.transfer = 'receiving';
      status.textContent = t('downloading', { pct: size ? Math.floor((received * 100) / size) : 100 });
    });
    pc.addEventListener('icecandidate', (e) => {
      this.socket.send({
        type: 'rtc.ice',
        room_id: m.room_id,
        to: m.user_id,
        candidate: e.candidate ? e.candidate.toJSON() : null,
        call_id: id,
      });
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed' && li.dataset.transfer !== 'done') this.transferFailed(id);
    });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.socket.send({ type: 'rtc.offer', room_id: m.room_id, to: m.user_id, sdp: offer.sdp, call_id: id });
  }

  transferFailed(id) {
    const tr = this.transfers.get(id);
    if (!tr) return;
    if (tr.li) {
      tr.li.dataset.transfer = 'failed';
      const status = tr.li.querySelector('.transfer-status');
      if (status) status.textContent = t('transfer_failed');
      this.refreshFile(tr.li);
    }
    this.finishTransfer(id, true);
  }

  finishTransfer(id, tellPeer) {
    const tr = this.transfers.get(id);
    if (!tr) return;
    this.transfers.delete(id);
    if (tellPeer) this.socket.send({ type: 'rtc.hangup', room_id: tr.roomId, to: tr.peerId, call_id: id });
    // Let the last bytes and the close reach the other side first.
    setTimeout(() => tr.pc.close(), 1000);
  }

  onFileSignal(ev) {
    const tr = this.transfers.get(ev.call_id);
    switch (ev.type) {
      case 'rtc.offer':
        this.send(ev).catch(() => this.finishTransfer(ev.call_id, true));
        break;
      case 'rtc.answer':
        if (tr) {
          tr.pc
            .setRemoteDescription({ type: 'answer', sdp: ev.sdp })
            .then(() => tr.ice.ready(tr.pc))
            .catch(() => this.transferFailed(ev.call_id));
        }
        break;
      case 'rtc.ice':
        if (tr) tr.ice.add(ev.candidate);
        break;
      case 'rtc.hangup':
        if (tr) this.transferFailed(ev.call_id);
        break;
      default:
        break;
    }
  }

  /** Answers a receiver's offer and streams the file on its data channel. */
  async send(offer) {
    const messageId = offer.call_id.split(':')[1];
    const file = this.files.get(messageId);
    if (!file) {
      // Another tab of ours shared it, or this one was reloaded: not ours to send.
      return;
    }
    const id = offer.call_id;
    const pc = new RTCPeerConnection(RTC_CONFIG);
    const ice = new IceQueue();
    this.transfers.set(id, { pc, ice, peerId: offer.from.id, roomId: offer.room_id, li: null });
    pc.addEventListener('icecandidate', (e) => {
      this.socket.send({
        type: 'rtc.ice',
        room_id: offer.room_id,
        to: offer.from.id,
        candidate: e.candidate ? e.candidate.toJSON() : null,
        call_id: id,
      });
    });
    pc.addEventListener('datachannel', (e) => {
      const channel = e.channel;
      channel.bufferedAmountLowThreshold = HIGH_WATER / 4;
      channel.addEventListener('open', () => {
        this.stream(file, channel).catch(() => this.finishTransfer(id, true));
      });
      channel.addEventListener('close', () => this.finishTransfer(id, false));
    });
    await pc.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
    await ice.ready(pc);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this.socket.send({ type: 'rtc.answer', room_id: offer.room_id, to: offer.from.id, sdp: answer.sdp, call_id: id });
  }

  async stream(file, channel) {
    for (let offset = 0; offset < file.size; offset += CHUNK) {
      if (channel.readyState !== 'open') throw new Error('closed');
      if (channel.bufferedAmount > HIGH_WATER) {
        await new Promise((resolve) => {
          channel.addEventListener('bufferedamountlow', resolve, { once: true });
        });
      }
      const chunk = await file.slice(offset, offset + CHUNK).arrayBuffer();
      channel.send(chunk);
    }
    channel.send('done');
  }
}
