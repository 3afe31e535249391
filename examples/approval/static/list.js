// The ticket list: a table and two charts of tickets by status, all updated live from the
// WebSocket /ws/tickets/ whenever any ticket changes anywhere (through channels.js, which
// reconnects by itself).
import { Channel } from '/static/channels.js';

(async () => {
  const me = await App.requireUser();
  const statuses = Object.keys(App.STATUS);
  const labels = statuses.map((s) => App.STATUS[s]);
  const colors = statuses.map((s) => App.COLORS[s]);
  const chartData = () => ({ labels, datasets: [{ label: 'tickets', data: statuses.map(() => 0), backgroundColor: colors }] });
  const bar = new Chart(document.getElementById('bar'), {
    type: 'bar',
    data: chartData(),
    options: { maintainAspectRatio: false, animation: { duration: 300 }, plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
  const pie = new Chart(document.getElementById('pie'), {
    type: 'pie',
    data: chartData(),
    options: { maintainAspectRatio: false, animation: { duration: 300 }, plugins: { legend: { position: 'right' } } },
  });

  function render(list) {
    const counts = Object.fromEntries(list.counts);
    const data = statuses.map((s) => counts[s] || 0);
    for (const chart of [bar, pie]) chart.data.datasets[0].data = data;
    // A lone slice needs no border (it would draw a seam from the center).
    pie.data.datasets[0].borderWidth = data.filter((n) => n > 0).length > 1 ? 1 : 0;
    bar.update();
    pie.update();
    const legend = document.getElementById('counts');
    legend.replaceChildren(...statuses.map((s, i) =>
      App.el('span', { style: `--c:${colors[i]}`, dataset: { status: s, count: String(data[i]) } }, `${labels[i]}: ${data[i]}`)));

    const body = document.getElementById('tickets');
    body.replaceChildren(...list.tickets.map((t) => {
      const yours = t.approver_ids.includes(me.id);
      return App.el('tr', { className: yours ? 'yours' : '', dataset: { ticket: String(t.id), status: t.status } },
        App.el('td', {}, String(t.id)),
        App.el('td', {}, App.el('a', { href: `/tickets/${t.id}/` }, t.title)),
        App.el('td', {}, t.workflow),
        App.el('td', {}, t.requester),
        App.el('td', {}, App.badge(t.status)),
        App.el('td', {}, t.step ? t.step + (yours ? ' — you' : '') : ''),
        App.el('td', { className: 'muted' }, App.time(t.updated_at)));
    }));
    document.getElementById('empty').classList.toggle('hidden', list.tickets.length > 0);
  }

  const channel = new Channel({ url: '/ws/tickets/', autoConnect: false });
  App.showConnection(channel);
  channel.on('message', (event) => {
    if (event.type === 'tickets.list') render(event.list);
  });
  channel.connect();
})();
