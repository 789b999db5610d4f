// The simulator's dev chat page. Plain script, no framework, no build step.
// It speaks only the control API under /sim/ and never handles bot tokens.
// Every piece of text from the server goes into the page with textContent.
'use strict';

(() => {
  const POLL_MS = 500;          // transcript poll period while a chat is open
  const FULL_EVERY = 10;        // every Nth poll reloads the whole transcript (edits, deletes)
  const LISTS_MS = 3000;        // bots, users and chats refresh period
  const USER_KEY = 'buko-sim-user';
  const TOKEN_KEY = 'buko-sim-admin-token';

  const state = {
    token: '',
    users: [],
    bots: [],
    chats: [],
    userId: '',
    chat: null,                 // the open chat object
    gen: 0,                     // bumps on every chat switch; stale answers are dropped
    messages: new Map(),        // message_id -> message
    nodes: new Map(),           // message_id -> <li>
    lastId: '',
    polls: 0,
    wake: null,                 // resolves the poll loop's sleep early
    replyTo: null,              // message being replied to
    editing: null,              // own message being edited
    blobs: new Map(),           // file_id -> Promise of an object URL (media of the open chat)
    listsJSON: {bots: '', names: '', users: '', chats: ''},
    listSeq: 0,                 // bumps on every list refresh and user switch; stale answers are dropped
  };

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers (text only, never HTML) ----

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.append(c);
    }
    return node;
  }

  let statusTimer = null;
  function setStatus(msg, isError) {
    const s = $('status');
    clearTimeout(statusTimer);
    if (!msg) {
      s.hidden = true;
      s.textContent = '';
      return;
    }
    s.textContent = msg;
    s.classList.toggle('error', !!isError);
    s.hidden = false;
    statusTimer = setTimeout(() => setStatus(''), isError ? 8000 : 3000);
  }

  // ---- the control API ----

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = {Accept: 'application/json'};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new APIError(0, 'the simulator does not answer (' + e.message + ')');
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!resp.ok || (data && data.ok === false)) {
      let why = text.trim() || resp.statusText;
      if (data && typeof data === 'object') {
        why = data.description || data.error || data.message || why;
        if (typeof why === 'object') why = JSON.stringify(why);
      }
      if (resp.status === 401) {
        why += ' (set the admin token under Settings, or open the page with ?admin_token=…)';
      }
      throw new APIError(resp.status, method + ' ' + path.split('?')[0] + ': ' + resp.status + ' ' + why);
    }
    // Tolerate both bare JSON and the Bot API envelope {ok, result}.
    if (data && typeof data === 'object' && !Array.isArray(data) && data.ok === true && 'result' in data) {
      return data.result;
    }
    return data;
  }

  const enc = encodeURIComponent;
  const ACTIONS = {
    typing: 'is typing…',
    upload_photo: 'is sending a photo…',
    upload_document: 'is sending a file…',
    record_voice: 'is recording a voice message…',
    upload_voice: 'is sending a voice message…',
  };
  const asList = (v) => (Array.isArray(v) ? v : []);

  // ---- lookups and labels ----

  const botById = (id) => state.bots.find((b) => b.bot_id === id);
  const userById = (id) => state.users.find((u) => u.user_id === id);

  function userLabel(u) {
    if (!u) return '';
    return u.handle ? u.display_name + ' (@' + u.handle + ')' : u.display_name;
  }

  function chatLabel(c) {
    if (c.type === 'private') {
      const b = botById(asList(c.bot_ids)[0]);
      return b ? b.display_name || '@' + b.handle : c.title || 'Private chat';
    }
    return c.title || 'Group';
  }

  function authorName(m) {
    if (m.from_kind === 'bot') {
      const b = botById(m.from_id);
      return b ? b.display_name || '@' + b.handle : m.from_name || 'bot';
    }
    if (m.from_id === state.userId) return 'You';
    const u = userById(m.from_id);
    return u ? u.display_name : m.from_name || 'someone';
  }

  function timeLabel(date) {
    let d = null;
    if (typeof date === 'number') d = new Date(date * 1000);
    else if (typeof date === 'string' && date) d = new Date(/^\d+$/.test(date) ? Number(date) * 1000 : date);
    if (!d || isNaN(d.getTime())) return '';
    return d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
  }

  function messageText(m) {
    if (typeof m.text === 'string' && m.text !== '') return m.text;
    if (typeof m.caption === 'string' && m.caption !== '') return m.caption;
    return '';
  }

  function snippet(s, n) {
    const t = (s || '').replace(/\s+/g, ' ').trim();
    return t.length > n ? t.slice(0, n - 1) + '…' : t;
  }

  // ---- lists: users, bots, chats ----

  function renderUsers() {
    const sel = $('user-select');
    sel.replaceChildren(el('option', {value: '', text: '— pick a user —'}));
    for (const u of state.users) {
      sel.append(el('option', {value: u.user_id, text: userLabel(u)}));
    }
    sel.value = userById(state.userId) ? state.userId : '';
    const me = userById(state.userId);
    $('current-user').textContent = me ? 'Chatting as ' + userLabel(me) + '.' : 'No user picked.';
    // Nobody to chat as yet: the first thing to do is to make someone. The
    // form opened that way closes again once users exist (the first render
    // may come before the user list has loaded); one opened by hand stays.
    const form = $('new-user');
    if (!state.users.length) {
      if (!form.open) { form.open = true; state.newUserAuto = true; }
    } else if (state.newUserAuto) {
      form.open = false;
      state.newUserAuto = false;
    }
    renderGroupChoices();
  }

  function renderBots() {
    const list = $('bot-list');
    list.replaceChildren();
    for (const b of state.bots) {
      list.append(el('li', {class: 'bot', 'data-testid': 'bot-' + b.bot_id, dataset: {botId: b.bot_id}},
        el('div', {class: 'bot-names'},
          el('span', {class: 'name', text: b.display_name || b.handle},
            b.gateway_open > 0 ? el('span', {class: 'online', title: 'connected to the Gateway', text: ' ●'}) : null),
          el('span', {class: 'handle muted', text: '@' + b.handle + (b.tier ? ' · ' + b.tier : '')})),
        el('button', {
          type: 'button',
          class: 'start',
          'data-testid': 'start-bot-' + b.bot_id,
          disabled: !state.userId,
          title: state.userId ? 'Open a private chat (/start)' : 'Pick a user first',
          text: 'Start',
          onclick: () => startBot(b.bot_id),
        })));
    }
    $('no-bots').hidden = state.bots.length > 0;
    renderGroupChoices();
  }

  function renderChats() {
    const list = $('chat-list');
    list.replaceChildren();
    for (const c of state.chats) {
      const active = state.chat && state.chat.chat_id === c.chat_id;
      list.append(el('li', {},
        el('button', {
          type: 'button',
          class: 'chat' + (active ? ' active' : ''),
          'data-testid': 'chat-' + c.chat_id,
          'aria-current': active ? 'true' : undefined,
          dataset: {chatId: c.chat_id},
          onclick: () => openChat(c.chat_id),
        },
        el('span', {class: 'name', text: chatLabel(c)}),
        el('span', {class: 'badge', text: c.type === 'private' ? 'bot' : 'group'}))));
    }
    $('no-chats').hidden = state.chats.length > 0;
    $('no-chats').textContent = state.userId ? 'No chats yet. Press Start on a bot.' : 'Pick a user, then press Start on a bot.';
  }

  function renderGroupChoices() {
    const keep = (box) => new Set([...box.querySelectorAll('input:checked')].map((i) => i.value));
    const bots = $('group-bots');
    const users = $('group-users');
    const botsOn = keep(bots);
    const usersOn = keep(users);
    bots.replaceChildren();
    for (const b of state.bots) {
      bots.append(el('label', {class: 'check'},
        el('input', {type: 'checkbox', value: b.bot_id, 'data-testid': 'group-bot-' + b.bot_id, checked: botsOn.has(b.bot_id)}),
        el('span', {text: b.display_name || '@' + b.handle})));
    }
    if (!state.bots.length) bots.append(el('span', {class: 'muted', text: 'No bots yet.'}));
    users.replaceChildren();
    const others = state.users.filter((u) => u.user_id !== state.userId);
    for (const u of others) {
      users.append(el('label', {class: 'check'},
        el('input', {type: 'checkbox', value: u.user_id, 'data-testid': 'group-user-' + u.user_id, checked: usersOn.has(u.user_id)}),
        el('span', {text: userLabel(u)})));
    }
    if (!others.length) users.append(el('span', {class: 'muted', text: 'Nobody else yet.'}));
  }

  // refreshLists reloads bots, users and the current user's chats, and
  // re-renders only what changed (so open forms keep their state).
  async function refreshLists() {
    const seq = ++state.listSeq;
    const [bots, users, chats] = await Promise.all([
      api('GET', '/sim/bots'),
      api('GET', '/sim/users'),
      state.userId ? api('GET', '/sim/chats?user_id=' + enc(state.userId)) : [],
    ]);
    if (seq !== state.listSeq) return; // a newer refresh or a user switch wins
    // Compare only what the lists show: bots carry counters that change often.
    const next = {
      bots: JSON.stringify(asList(bots).map((b) => [b.bot_id, b.handle, b.display_name, b.tier, b.gateway_open > 0])),
      names: JSON.stringify(asList(bots).map((b) => [b.bot_id, b.handle, b.display_name])),
      users: JSON.stringify(users),
      chats: JSON.stringify(asList(chats).map((c) => [c.chat_id, c.type, c.title, c.bot_ids, c.user_ids, c.status])),
    };
    const changed = (k) => next[k] !== state.listsJSON[k];
    const botsChanged = changed('bots');
    const namesChanged = changed('names');
    const usersChanged = changed('users');
    const chatsChanged = changed('chats');
    state.listsJSON = next;
    state.bots = asList(bots);
    state.users = asList(users);
    state.chats = asList(chats);
    if (state.userId && !userById(state.userId)) {
      // The simulator restarted or forgot the user.
      selectUser('');
      return;
    }
    if (usersChanged) renderUsers();
    if (botsChanged) renderBots();
    if (namesChanged || chatsChanged) renderChats();
    if (state.chat && (namesChanged || chatsChanged)) renderChatHeader();
    if (namesChanged || usersChanged) relabelMessages();
  }

  async function refreshListsQuietly() {
    try {
      await refreshLists();
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  // ---- user ----

  function selectUser(id) {
    state.listSeq++;
    state.userId = id || '';
    if (state.userId) localStorage.setItem(USER_KEY, state.userId);
    else localStorage.removeItem(USER_KEY);
    closeChat();
    state.listsJSON.chats = '';
    state.listsJSON.users = '';
    state.chats = [];
    renderUsers();
    renderBots();
    renderChats();
    refreshListsQuietly();
  }

  async function createUser(ev) {
    ev.preventDefault();
    const name = $('new-user-name').value.trim();
    if (!name) return;
    const handle = $('new-user-handle').value.trim().replace(/^@/, '');
    const body = {display_name: name};
    if (handle) body.handle = handle;
    try {
      const res = await api('POST', '/sim/users', body);
      $('new-user-name').value = '';
      $('new-user-handle').value = '';
      $('new-user').open = false;
      await refreshLists();
      selectUser(res.user_id);
      setStatus('Created ' + name + '.');
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  // ---- chats ----

  async function startBot(botId) {
    if (!state.userId) {
      setStatus('Pick or create a user first.', true);
      return;
    }
    try {
      const res = await api('POST', '/sim/chats/private', {user_id: state.userId, bot_id: botId});
      await refreshLists();
      openChat(res.chat_id);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  async function createGroup(ev) {
    ev.preventDefault();
    if (!state.userId) {
      setStatus('Pick or create a user first.', true);
      return;
    }
    const title = $('group-title').value.trim();
    const botIds = [...$('group-bots').querySelectorAll('input:checked')].map((i) => i.value);
    const userIds = [state.userId, ...[...$('group-users').querySelectorAll('input:checked')].map((i) => i.value)];
    if (!title) return;
    try {
      const res = await api('POST', '/sim/chats/group', {title, user_ids: userIds, bot_ids: botIds});
      $('group-title').value = '';
      for (const i of $('group-form').querySelectorAll('input:checked')) i.checked = false;
      $('new-group').open = false;
      await refreshLists();
      openChat(res.chat_id);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  function renderChatHeader() {
    const c = state.chat;
    if (!c) return;
    $('chat-title').textContent = chatLabel(c);
    let sub = '';
    if (c.type === 'private') {
      const b = botById(asList(c.bot_ids)[0]);
      sub = b ? '@' + b.handle + ' · bot' : 'bot';
    } else {
      const nb = asList(c.bot_ids).length;
      const nu = asList(c.user_ids).length;
      sub = 'group · ' + nu + (nu === 1 ? ' person, ' : ' people, ') + nb + (nb === 1 ? ' bot' : ' bots');
    }
    const acting = asList(c.actions).map((a) => {
      const b = botById(a.bot_id);
      return (b ? b.display_name || '@' + b.handle : 'The bot') + ' ' + (ACTIONS[a.action] || 'is busy…');
    });
    $('chat-subtitle').textContent = acting.length ? acting.join(', ') : sub;
    $('chat-subtitle').classList.toggle('activity', acting.length > 0);
    // A private chat the user blocked or stopped takes no messages until restarted.
    const closed = c.type === 'private' && c.status && c.status !== 'member';
    $('block-bot').hidden = c.type !== 'private' || c.status === 'kicked';
    $('chat-closed').hidden = !closed;
    $('composer').hidden = !!closed;
    $('chat-closed-text').textContent = !closed ? ''
      : c.status === 'kicked' ? 'You blocked this bot. It cannot write to you.'
        : 'You stopped this bot.';
    for (const b of $('chat-list').querySelectorAll('button.chat')) {
      const on = b.dataset.chatId === c.chat_id;
      b.classList.toggle('active', on);
      if (on) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
    }
  }

  function resetTranscript() {
    for (const p of state.blobs.values()) p.then((u) => u && URL.revokeObjectURL(u));
    state.blobs.clear();
    state.messages.clear();
    state.nodes.clear();
    state.lastId = '';
    state.polls = 0;
    $('transcript').replaceChildren();
    cancelReply();
    cancelEdit();
  }

  function openChat(chatId) {
    const c = state.chats.find((x) => x.chat_id === chatId) || {chat_id: chatId, type: 'private', bot_ids: [], user_ids: []};
    state.gen++;
    state.chat = c;
    resetTranscript();
    $('empty-view').hidden = true;
    $('chat-view').hidden = false;
    document.body.classList.add('chat-open');
    renderChatHeader();
    pollLoop(state.gen);
    $('composer-text').focus();
  }

  function closeChat() {
    state.gen++;
    state.chat = null;
    resetTranscript();
    $('chat-view').hidden = true;
    $('empty-view').hidden = false;
    document.body.classList.remove('chat-open');
    for (const b of $('chat-list').querySelectorAll('button.chat.active')) {
      b.classList.remove('active');
      b.removeAttribute('aria-current');
    }
  }

  async function blockBot() {
    const c = state.chat;
    if (!c || !state.userId) return;
    try {
      await api('POST', '/sim/chats/' + enc(c.chat_id) + '/block', {user_id: state.userId});
      setStatus('You blocked ' + chatLabel(c) + '.');
      if (state.chat === c) {
        state.chat = Object.assign({}, c, {status: 'kicked'});
        renderChatHeader();
      }
      await refreshLists();
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  async function restartBot() {
    const c = state.chat;
    if (!c || c.type !== 'private') return;
    await startBot(asList(c.bot_ids)[0]);
  }

  // ---- transcript ----

  function sleep(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        if (state.wake === done) state.wake = null;
        resolve();
      }
      state.wake = done;
    });
  }

  function pollNow() {
    if (state.wake) state.wake();
  }

  async function pollLoop(gen) {
    let failing = false;
    while (gen === state.gen) {
      try {
        await fetchMessages(gen);
        if (failing) setStatus('');
        failing = false;
      } catch (e) {
        if (!failing && gen === state.gen) setStatus(e.message, true);
        failing = true;
      }
      if (gen !== state.gen) return;
      await sleep(POLL_MS);
    }
  }

  async function fetchMessages(gen) {
    const c = state.chat;
    const full = !state.lastId || state.polls % FULL_EVERY === 0;
    state.polls++;
    let path = '/sim/chats/' + enc(c.chat_id) + '/messages';
    if (!full) path += '?after=' + enc(state.lastId);
    const [got, view] = await Promise.all([
      api('GET', path),
      api('GET', '/sim/chats/' + enc(c.chat_id)),
    ]);
    if (gen !== state.gen) return;
    if (view && view.chat_id === c.chat_id && JSON.stringify(view) !== JSON.stringify(c)) {
      state.chat = view;
      renderChatHeader();
    }
    const list = asList(got).filter((m) => m && m.message_id !== undefined && m.message_id !== null);
    if (full) reconcile(list);
    else for (const m of list) upsert(m);
    if (list.length) state.lastId = String(list[list.length - 1].message_id);
  }

  // reconcile makes the transcript match a full listing: new, edited and
  // deleted messages.
  function reconcile(list) {
    const seen = new Set();
    for (const m of list) {
      seen.add(String(m.message_id));
      upsert(m);
    }
    for (const [id, node] of state.nodes) {
      if (!seen.has(id)) {
        node.remove();
        state.nodes.delete(id);
        state.messages.delete(id);
      }
    }
  }

  function atBottom() {
    const t = $('transcript');
    return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
  }

  function upsert(m) {
    if (!m || m.message_id === undefined || m.message_id === null) return;
    const id = String(m.message_id);
    const old = state.messages.get(id);
    state.messages.set(id, m);
    if (old && JSON.stringify(old) === JSON.stringify(m)) return;
    const stick = atBottom();
    const node = renderMessage(m);
    const prev = state.nodes.get(id);
    if (prev) prev.replaceWith(node);
    else $('transcript').append(node);
    state.nodes.set(id, node);
    if (prev) {
      // Quotes of this message show its new text.
      for (const [rid, r] of state.messages) {
        if (String(r.reply_to_message_id || '') === id) {
          const fresh = renderMessage(r);
          state.nodes.get(rid).replaceWith(fresh);
          state.nodes.set(rid, fresh);
        }
      }
    }
    if (!prev && (stick || m.from_id === state.userId)) node.scrollIntoView({block: 'end'});
  }

  function relabelMessages() {
    for (const [id, node] of state.nodes) {
      const fresh = renderMessage(state.messages.get(id));
      node.replaceWith(fresh);
      state.nodes.set(id, fresh);
    }
  }

  function renderMessage(m) {
    const id = String(m.message_id);
    const isBot = m.from_kind === 'bot';
    const own = !isBot && m.from_id === state.userId;
    const text = messageText(m);
    let quote = null;
    const replyId = m.reply_to_message_id ? String(m.reply_to_message_id) : '';
    if (replyId) {
      const target = state.messages.get(replyId);
      quote = el('div', {class: 'quote', 'data-testid': 'quote-' + id},
        el('span', {class: 'quote-author', text: target ? authorName(target) : 'message ' + replyId}),
        el('span', {class: 'quote-text', text: target ? snippet(messageText(target), 80) : ''}));
    }
    const edited = !!m.edit_date;
    const actions = el('div', {class: 'actions'},
      el('button', {type: 'button', class: 'link', 'data-testid': 'reply-' + id, text: 'Reply', onclick: () => startReply(id)}),
      own && typeof m.text === 'string'
        ? el('button', {type: 'button', class: 'link', 'data-testid': 'edit-' + id, text: 'Edit', onclick: () => startEdit(id)})
        : null);
    return el('li', {
      class: 'msg ' + (isBot ? 'msg-bot' : 'msg-user') + (own ? ' msg-own' : ''),
      'data-testid': 'msg-' + id,
      dataset: {messageId: id, fromKind: isBot ? 'bot' : 'user', fromId: String(m.from_id || '')},
    },
    el('div', {class: 'meta'},
      el('span', {class: 'author', text: authorName(m)}),
      isBot ? el('span', {class: 'badge', text: 'bot'}) : null,
      el('span', {class: 'time muted', text: timeLabel(m.date)}),
      edited ? el('span', {class: 'edited muted', text: 'edited'}) : null),
    quote,
    renderMedia(m),
    text || !hasMedia(m) ? el('div', {class: 'text' + (text ? '' : ' muted'), text: text || '(no text)'}) : null,
    actions);
  }

  function hasMedia(m) {
    return asList(m.photo).length > 0 || !!(m.document && m.document.file_id);
  }

  // mediaURL fetches a stored file through the control API (with the admin
  // token, which an <img src> could not send) and returns an object URL.
  function mediaURL(fileID) {
    if (!state.blobs.has(fileID)) {
      const headers = state.token ? {Authorization: 'Bearer ' + state.token} : {};
      const path = '/sim/' + fileID.split('/').map(enc).join('/');
      state.blobs.set(fileID, fetch(path, {headers, cache: 'no-store'})
        .then((r) => (r.ok ? r.blob() : Promise.reject(new Error('HTTP ' + r.status))))
        .then((b) => URL.createObjectURL(b))
        .catch((e) => {
          state.blobs.delete(fileID);
          setStatus('Loading ' + fileID + ' failed: ' + e.message, true);
          return '';
        }));
    }
    return state.blobs.get(fileID);
  }

  function sizeLabel(n) {
    if (!n) return '';
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KB';
    return (n / (1 << 20)).toFixed(1) + ' MB';
  }

  function renderMedia(m) {
    const photos = asList(m.photo);
    if (photos.length && photos[photos.length - 1].file_id) {
      const img = el('img', {class: 'photo', alt: 'photo', 'data-testid': 'photo-' + m.message_id});
      mediaURL(photos[photos.length - 1].file_id).then((u) => { if (u) img.src = u; });
      return img;
    }
    const d = m.document;
    if (d && d.file_id) {
      const name = d.file_name || 'file';
      return el('button', {
        type: 'button',
        class: 'doc',
        title: 'Download ' + name,
        'data-testid': 'document-' + m.message_id,
        text: name + (d.file_size ? ' · ' + sizeLabel(d.file_size) : '') + ' ↓',
        onclick: async () => {
          const u = await mediaURL(d.file_id);
          if (!u) return;
          const a = el('a', {href: u, download: name});
          document.body.append(a);
          a.click();
          a.remove();
        },
      });
    }
    return null;
  }

  // ---- composer ----

  function startReply(id) {
    const m = state.messages.get(id);
    if (!m) return;
    cancelEdit();
    state.replyTo = id;
    $('reply-banner-text').textContent = 'Replying to ' + authorName(m) + ': ' + snippet(messageText(m), 60);
    $('reply-banner').hidden = false;
    $('composer-text').focus();
  }

  function cancelReply() {
    state.replyTo = null;
    $('reply-banner').hidden = true;
    $('reply-banner-text').textContent = '';
  }

  function startEdit(id) {
    const m = state.messages.get(id);
    if (!m) return;
    cancelReply();
    state.editing = id;
    $('edit-banner').hidden = false;
    $('send').textContent = 'Save';
    const box = $('composer-text');
    box.value = m.text || '';
    box.focus();
    growComposer();
  }

  function cancelEdit() {
    if (state.editing !== null) $('composer-text').value = '';
    state.editing = null;
    $('edit-banner').hidden = true;
    $('send').textContent = 'Send';
    growComposer();
  }

  function growComposer() {
    const box = $('composer-text');
    box.style.height = 'auto';
    box.style.height = Math.min(box.scrollHeight, 160) + 'px';
  }

  async function submitComposer(ev) {
    ev.preventDefault();
    const c = state.chat;
    const box = $('composer-text');
    const text = box.value;
    if (!c || !text.trim()) return;
    if (!state.userId) {
      setStatus('Pick or create a user first.', true);
      return;
    }
    const send = $('send');
    send.disabled = true;
    try {
      if (state.editing !== null) {
        const id = state.editing;
        const res = await api('PATCH', '/sim/chats/' + enc(c.chat_id) + '/messages/' + enc(id), {user_id: state.userId, text});
        const m = state.messages.get(id);
        if (m) upsert(Object.assign({}, m, {text, edit_date: (res && res.edit_date) || m.edit_date || 1}));
        cancelEdit();
      } else {
        const body = {user_id: state.userId, text};
        if (state.replyTo) body.reply_to_message_id = state.replyTo;
        await api('POST', '/sim/chats/' + enc(c.chat_id) + '/messages', body);
        box.value = '';
        cancelReply();
      }
      growComposer();
      pollNow();
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      send.disabled = false;
      box.focus();
    }
  }

  function composerKey(ev) {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    } else if (ev.key === 'Escape') {
      cancelReply();
      cancelEdit();
    }
  }

  // ---- settings ----

  function readToken() {
    const params = new URLSearchParams(location.search);
    const fromURL = params.get('admin_token');
    if (fromURL !== null) {
      sessionStorage.setItem(TOKEN_KEY, fromURL);
      params.delete('admin_token');
      const q = params.toString();
      history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
    }
    state.token = sessionStorage.getItem(TOKEN_KEY) || '';
    $('admin-token').value = state.token;
  }

  function saveToken(ev) {
    ev.preventDefault();
    state.token = $('admin-token').value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    state.listsJSON = {bots: '', names: '', users: '', chats: ''};
    setStatus(state.token ? 'Admin token set.' : 'Admin token cleared.');
    refreshListsQuietly();
  }

  // ---- start ----

  function init() {
    // A bug in this page shows up on the page, not only in the console.
    window.addEventListener('error', (ev) => setStatus('Page error: ' + ev.message, true));
    window.addEventListener('unhandledrejection', (ev) => setStatus('Page error: ' + String(ev.reason), true));
    readToken();
    state.userId = localStorage.getItem(USER_KEY) || '';
    $('user-select').addEventListener('change', (ev) => selectUser(ev.target.value));
    $('user-form').addEventListener('submit', createUser);
    $('group-form').addEventListener('submit', createGroup);
    $('token-form').addEventListener('submit', saveToken);
    $('composer').addEventListener('submit', submitComposer);
    $('composer-text').addEventListener('keydown', composerKey);
    $('composer-text').addEventListener('input', growComposer);
    $('cancel-reply').addEventListener('click', cancelReply);
    $('cancel-edit').addEventListener('click', cancelEdit);
    $('block-bot').addEventListener('click', blockBot);
    $('restart-bot').addEventListener('click', restartBot);
    $('back').addEventListener('click', closeChat);
    renderUsers();
    renderBots();
    renderChats();
    refreshListsQuietly();
    setInterval(refreshListsQuietly, LISTS_MS);
    document.body.dataset.ready = 'true';
  }

  init();
})();
