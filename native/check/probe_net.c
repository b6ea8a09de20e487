/* Probes of networking: TCP repair, veth between network namespaces, and
 * holding packets on an NFQUEUE. Each works in namespaces of its own. */
#include "check.h"
#include "fdio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>

#define LOOPBACK htonl(INADDR_LOOPBACK)

/* A network namespace of the probe's own, with lo up; everything made in it
 * vanishes when the probe process exits. */
static int new_netns(struct probe_ctx *c)
{
	if (unshare(CLONE_NEWNET) < 0)
		return probe_fail(c, errno, "unshare(CLONE_NEWNET)");
	return netns_lo_up(c);
}

/* ------------------------------------------------------------ tcp_repair */

struct repair_view {
	unsigned int recv_seq, send_seq;
	struct tcp_repair_window win;
	int inq, outq;
};

static int repair_read(struct probe_ctx *c, int fd, const char *who, struct repair_view *v)
{
	int on = TCP_REPAIR_ON, q;
	socklen_t len;

	if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)) < 0)
		return probe_fail(c, errno, "setsockopt(%s fd %d, TCP_REPAIR, 1)", who, fd);
	q = TCP_RECV_QUEUE;
	if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)) < 0)
		return probe_fail(c, errno, "setsockopt(%s fd %d, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)", who, fd);
	len = sizeof(v->recv_seq);
	if (getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &v->recv_seq, &len) < 0)
		return probe_fail(c, errno, "getsockopt(%s fd %d, TCP_QUEUE_SEQ, receive queue)", who, fd);
	q = TCP_SEND_QUEUE;
	if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)) < 0)
		return probe_fail(c, errno, "setsockopt(%s fd %d, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)", who, fd);
	len = sizeof(v->send_seq);
	if (getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &v->send_seq, &len) < 0)
		return probe_fail(c, errno, "getsockopt(%s fd %d, TCP_QUEUE_SEQ, send queue)", who, fd);
	len = sizeof(v->win);
	if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &v->win, &len) < 0)
		return probe_fail(c, errno, "getsockopt(%s fd %d, TCP_REPAIR_WINDOW)", who, fd);
	if (ioctl(fd, SIOCINQ, &v->inq) < 0)
		return probe_fail(c, errno, "ioctl(%s fd %d, SIOCINQ)", who, fd);
	if (ioctl(fd, SIOCOUTQ, &v->outq) < 0)
		return probe_fail(c, errno, "ioctl(%s fd %d, SIOCOUTQ)", who, fd);
	return 0;
}

static int repair_off(struct probe_ctx *c, int fd, const char *who)
{
	int off = TCP_REPAIR_OFF;

	if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof(off)) < 0)
		return probe_fail(c, errno, "setsockopt(%s fd %d, TCP_REPAIR, 0)", who, fd);
	return 0;
}

/* Waits until fd has exactly want bytes queued for reading. */
static int wait_inq(struct probe_ctx *c, int fd, const char *who, int want)
{
	uint64_t deadline = mono_ns() + (uint64_t)CHECK_WAIT_MS * 1000000ull;
	int inq = 0;

	for (;;) {
		if (ioctl(fd, SIOCINQ, &inq) < 0)
			return probe_fail(c, errno, "ioctl(%s fd %d, SIOCINQ)", who, fd);
		if (inq == want)
			return 0;
		if (mono_ns() >= deadline)
			return probe_failx(c, "%s fd %d has %d bytes queued after %d ms, expected %d", who, fd, inq, CHECK_WAIT_MS, want);
		wait_fd(fd, POLLIN, 10);
	}
}

int probe_tcp_repair(struct probe_ctx *c)
{
	static const char c2s[] = "client-to-server-unread";
	static const char s2c[] = "server-to-client-unread-data";
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = LOOPBACK };
	socklen_t alen = sizeof(addr);
	int lfd = -1, cfd = -1, sfd = -1;
	struct repair_view cv, sv;
	char buf[64];
	bool crep = false, srep = false;
	ssize_t n;

	if (new_netns(c) < 0)
		return -1;
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		probe_fail(c, errno, "socket(AF_INET, SOCK_STREAM)");
		goto out;
	}
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 1) < 0 || getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) {
		probe_fail(c, errno, "bind/listen(fd %d, 127.0.0.1)", lfd);
		goto out;
	}
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cfd < 0) {
		probe_fail(c, errno, "socket(AF_INET, SOCK_STREAM)");
		goto out;
	}
	if (connect(cfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		probe_fail(c, errno, "connect(fd %d, 127.0.0.1:%d)", cfd, ntohs(addr.sin_port));
		goto out;
	}
	sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (sfd < 0) {
		probe_fail(c, errno, "accept4(fd %d)", lfd);
		goto out;
	}
	if (fd_write_all(cfd, c2s, sizeof(c2s) - 1) < 0 || fd_write_all(sfd, s2c, sizeof(s2c) - 1) < 0) {
		probe_fail(c, errno, "write(connected socket)");
		goto out;
	}
	if (wait_inq(c, cfd, "client", (int)sizeof(s2c) - 1) < 0 || wait_inq(c, sfd, "server", (int)sizeof(c2s) - 1) < 0)
		goto out;
	if (probe_gate(c, "setsockopt(TCP_REPAIR)") < 0)
		goto out;
	crep = true;
	if (repair_read(c, cfd, "client", &cv) < 0)
		goto out;
	srep = true;
	if (repair_read(c, sfd, "server", &sv) < 0)
		goto out;
	/* Each side's receive sequence is where the other side's send queue ends. */
	if (cv.recv_seq != sv.send_seq || sv.recv_seq != cv.send_seq || cv.inq != (int)sizeof(s2c) - 1) {
		probe_failx(c,
			    "TCP_QUEUE_SEQ: client recv %u send %u, server recv %u send %u "
			    "(client has %d unread bytes): the sides disagree",
			    cv.recv_seq, cv.send_seq, sv.recv_seq, sv.send_seq, cv.inq);
		goto out;
	}
	crep = srep = false;
	if (repair_off(c, cfd, "client") < 0 || repair_off(c, sfd, "server") < 0)
		goto out;
	n = recv(cfd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n != (ssize_t)sizeof(s2c) - 1 || memcmp(buf, s2c, (size_t)n) != 0) {
		if (n < 0)
			probe_fail(c, errno, "recv(client fd %d) after TCP_REPAIR off", cfd);
		else
			probe_failx(c,
				    "recv(client fd %d) after TCP_REPAIR off read %zd bytes, expected "
				    "%zu",
				    cfd, n, sizeof(s2c) - 1);
		goto out;
	}
	probe_ok(c,
		 "fresh netns, 127.0.0.1 connection to port %d, client in TCP_REPAIR with %d "
		 "unread bytes: recv seq %u, send seq %u (matching the server's send/recv), "
		 "window snd_wl1 %u snd_wnd %u max_window %u rcv_wnd %u rcv_wup %u; repair off, "
		 "unread data still readable",
		 ntohs(addr.sin_port), cv.inq, cv.recv_seq, cv.send_seq, cv.win.snd_wl1, cv.win.snd_wnd, cv.win.max_window, cv.win.rcv_wnd,
		 cv.win.rcv_wup);
out:
	if (crep)
		repair_off(c, cfd, "client");
	if (srep)
		repair_off(c, sfd, "server");
	if (sfd >= 0)
		close(sfd);
	if (cfd >= 0)
		close(cfd);
	if (lfd >= 0)
		close(lfd);
	return c->ok ? 0 : -1;
}

/* ------------------------------------------------------------ netns_veth */

#define VETH_PORT 47713

struct ns_holder {
	pid_t pid;
	int hold_fd; /* closing it lets the holder exit */
};

/* A child that unshares a network namespace and keeps it alive. */
static int ns_holder_start(struct probe_ctx *c, struct ns_holder *h)
{
	int ready[2], hold[2], err = 0;

	h->pid = -1;
	h->hold_fd = -1;
	if (pipe2(ready, O_CLOEXEC) < 0)
		return probe_fail(c, errno, "pipe2()");
	if (pipe2(hold, O_CLOEXEC) < 0) {
		int e = errno;
		close(ready[0]);
		close(ready[1]);
		return probe_fail(c, e, "pipe2()");
	}
	h->pid = fork_helper();
	if (h->pid < 0) {
		int e = errno;
		close(ready[0]);
		close(ready[1]);
		close(hold[0]);
		close(hold[1]);
		return probe_fail(c, e, "fork(netns holder)");
	}
	if (h->pid == 0) {
		char x;
		close_fds_except(ready[1], hold[0]);
		err = unshare(CLONE_NEWNET) < 0 ? errno : 0;
		fd_write_all(ready[1], &err, sizeof(err));
		close(ready[1]);
		while (read(hold[0], &x, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(ready[1]);
	close(hold[0]);
	h->hold_fd = hold[1];
	if (read_exact_timeout(ready[0], &err, sizeof(err), CHECK_WAIT_MS) < 0) {
		err = errno;
		close(ready[0]);
		return probe_fail(c, err, "read(readiness of netns holder pid %d)", (int)h->pid);
	}
	close(ready[0]);
	if (err)
		return probe_fail(c, err, "unshare(CLONE_NEWNET) in pid %d", (int)h->pid);
	return 0;
}

static void ns_holder_stop(struct ns_holder *h)
{
	int st;

	if (h->hold_fd >= 0)
		close(h->hold_fd);
	h->hold_fd = -1;
	if (h->pid > 0 && wait_pid_timeout(h->pid, &st, 1000) != h->pid)
		kill_and_reap(h->pid);
	h->pid = -1;
}

/* socket() inside the network namespace of pid. */
static int socket_in_netns(struct probe_ctx *c, pid_t pid, int type)
{
	char path[64];
	int self, ns, fd, e;

	self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (self < 0)
		return probe_fail(c, errno, "open(/proc/self/ns/net)");
	snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
	ns = open(path, O_RDONLY | O_CLOEXEC);
	if (ns < 0) {
		e = errno;
		close(self);
		return probe_fail(c, e, "open(%s)", path);
	}
	if (setns(ns, CLONE_NEWNET) < 0) {
		e = errno;
		close(ns);
		close(self);
		return probe_fail(c, e, "setns(%s, CLONE_NEWNET)", path);
	}
	fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
	e = errno;
	if (setns(self, CLONE_NEWNET) < 0) {
		e = errno;
		if (fd >= 0)
			close(fd);
		close(ns);
		close(self);
		return probe_fail(c, e, "setns(/proc/self/ns/net, back)");
	}
	close(ns);
	close(self);
	if (fd < 0)
		return probe_fail(c, e, "socket(AF_INET) in the netns of pid %d", (int)pid);
	return fd;
}

int probe_netns_veth(struct probe_ctx *c)
{
	static const char msg[] = "understudy-veth-check";
	struct ns_holder a = { -1, -1 }, b = { -1, -1 };
	struct sockaddr_in sa = { .sin_family = AF_INET }, da = { .sin_family = AF_INET }, from;
	socklen_t flen = sizeof(from);
	char pid_b[16], buf[64], src[INET_ADDRSTRLEN];
	int sfd = -1, rfd = -1, sends = 0, r;
	uint64_t t0 = 0;
	ssize_t n = -1;

	if (probe_gate(c, "unshare(CLONE_NEWNET)") < 0)
		return -1;
	if (ns_holder_start(c, &a) < 0 || ns_holder_start(c, &b) < 0)
		goto out;
	snprintf(pid_b, sizeof(pid_b), "%d", (int)b.pid);
	{
		const char *const add[] = { "ip", "link", "add", "usck0", "type", "veth", "peer", "name", "usck1", "netns", pid_b, NULL };
		const char *const addr_a[] = { "ip", "addr", "add", "10.213.77.1/30", "dev", "usck0", NULL };
		const char *const up_a[] = { "ip", "link", "set", "usck0", "up", NULL };
		const char *const addr_b[] = { "ip", "addr", "add", "10.213.77.2/30", "dev", "usck1", NULL };
		const char *const up_b[] = { "ip", "link", "set", "usck1", "up", NULL };

		if (run_cmd(c, add, a.pid) < 0 || run_cmd(c, addr_a, a.pid) < 0 || run_cmd(c, up_a, a.pid) < 0 || run_cmd(c, addr_b, b.pid) < 0 ||
		    run_cmd(c, up_b, b.pid) < 0)
			goto out;
	}
	sfd = socket_in_netns(c, a.pid, SOCK_DGRAM);
	if (sfd < 0)
		goto out;
	rfd = socket_in_netns(c, b.pid, SOCK_DGRAM);
	if (rfd < 0)
		goto out;
	inet_pton(AF_INET, "10.213.77.1", &sa.sin_addr);
	inet_pton(AF_INET, "10.213.77.2", &da.sin_addr);
	da.sin_port = htons(VETH_PORT);
	if (bind(sfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		probe_fail(c, errno, "bind(fd %d, 10.213.77.1) in the netns of pid %d", sfd, (int)a.pid);
		goto out;
	}
	if (bind(rfd, (struct sockaddr *)&da, sizeof(da)) < 0) {
		probe_fail(c, errno, "bind(fd %d, 10.213.77.2:%d) in the netns of pid %d", rfd, VETH_PORT, (int)b.pid);
		goto out;
	}
	/* The first datagram may wait on ARP; resend if a link was still coming up. */
	t0 = mono_ns();
	for (r = 0; r == 0 && sends < 3; sends++) {
		if (sendto(sfd, msg, sizeof(msg) - 1, 0, (struct sockaddr *)&da, sizeof(da)) < 0) {
			probe_fail(c, errno, "sendto(fd %d, 10.213.77.2:%d) from the netns of pid %d", sfd, VETH_PORT, (int)a.pid);
			goto out;
		}
		r = wait_fd(rfd, POLLIN, CHECK_WAIT_MS / 3);
	}
	if (r <= 0) {
		probe_fail(c, r < 0 ? errno : ETIMEDOUT,
			   "poll(fd %d, 10.213.77.2:%d) for the datagram "
			   "over usck0-usck1 (%d sent)",
			   rfd, VETH_PORT, sends);
		goto out;
	}
	n = recvfrom(rfd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
	if (n < 0) {
		probe_fail(c, errno, "recvfrom(fd %d)", rfd);
		goto out;
	}
	inet_ntop(AF_INET, &from.sin_addr, src, sizeof(src));
	if (n != (ssize_t)sizeof(msg) - 1 || memcmp(buf, msg, (size_t)n) != 0 || from.sin_addr.s_addr != sa.sin_addr.s_addr) {
		probe_failx(c,
			    "received %zd bytes from %s over the veth, expected \"%s\" from "
			    "10.213.77.1",
			    n, src, msg);
		goto out;
	}
	probe_ok(c,
		 "netns of pid %d (usck0 10.213.77.1/30) and of pid %d (usck1 10.213.77.2/30) "
		 "joined by a veth pair made with ip(8); a UDP datagram crossed from %s in %.1f ms "
		 "(%d sent)",
		 (int)a.pid, (int)b.pid, src, (double)(mono_ns() - t0) / 1e6, sends);
out:
	if (sfd >= 0)
		close(sfd);
	if (rfd >= 0)
		close(rfd);
	ns_holder_stop(&a); /* the veth pair goes with the namespaces */
	ns_holder_stop(&b);
	return c->ok ? 0 : -1;
}

/* ------------------------------------------------------------ nfqueue_hold */

#define NFQ_PORT 47714
#define NFQ_QUEUE 4213
#define NFQ_PACKETS 3

struct nfq_state {
	int n;
	uint32_t ids[8];
	int payload_ok[8];
};

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *nfmsg, struct nfq_data *nfa, void *data)
{
	struct nfq_state *s = data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	unsigned char *pkt;
	int len = nfq_get_payload(nfa, &pkt);
	char want[16];

	(void)qh;
	(void)nfmsg;
	if (!ph || s->n >= 8)
		return 0;
	s->ids[s->n] = ntohl(ph->packet_id);
	s->payload_ok[s->n] = 0;
	snprintf(want, sizeof(want), "nfq-%d", s->n + 1);
	if (len >= (int)sizeof(struct iphdr)) {
		const struct iphdr *ip = (const struct iphdr *)pkt;
		int off = ip->ihl * 4 + 8; /* past the UDP header */
		if (ip->protocol == IPPROTO_UDP && len - off == (int)strlen(want) && memcmp(pkt + off, want, strlen(want)) == 0)
			s->payload_ok[s->n] = 1;
	}
	s->n++;
	return 0;
}

int probe_nfqueue_hold(struct probe_ctx *c)
{
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_addr.s_addr = LOOPBACK, .sin_port = htons(NFQ_PORT) };
	struct nfq_state st = { 0 };
	struct nfq_handle *h = NULL;
	struct nfq_q_handle *qh = NULL;
	char port[16], queue[16], buf[65536];
	const char *iptables = access("/usr/sbin/iptables", X_OK) == 0 ? "/usr/sbin/iptables" : "iptables";
	int rfd = -1, sfd = -1, nfd, r;
	uint32_t max_id = 0;
	uint64_t t_sent, t_verdict;

	if (new_netns(c) < 0)
		return -1;
	rfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	sfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (rfd < 0 || sfd < 0) {
		probe_fail(c, errno, "socket(AF_INET, SOCK_DGRAM)");
		goto out;
	}
	if (bind(rfd, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
		probe_fail(c, errno, "bind(fd %d, 127.0.0.1:%d)", rfd, NFQ_PORT);
		goto out;
	}
	if (probe_gate(c, "nfq_create_queue()") < 0)
		goto out;
	h = nfq_open();
	if (!h) {
		probe_fail(c, errno, "nfq_open()");
		goto out;
	}
	if (nfq_bind_pf(h, AF_INET) < 0) { /* a no-op on kernels >= 3.8, kept for older */
		probe_fail(c, errno, "nfq_bind_pf(AF_INET)");
		goto out;
	}
	qh = nfq_create_queue(h, NFQ_QUEUE, on_packet, &st);
	if (!qh) {
		probe_fail(c, errno, "nfq_create_queue(queue %d)", NFQ_QUEUE);
		goto out;
	}
	if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xffff) < 0) {
		probe_fail(c, errno, "nfq_set_mode(queue %d, NFQNL_COPY_PACKET)", NFQ_QUEUE);
		goto out;
	}
	snprintf(port, sizeof(port), "%d", NFQ_PORT);
	snprintf(queue, sizeof(queue), "%d", NFQ_QUEUE);
	{
		const char *const rule[] = { iptables,	"-A", "OUTPUT", "-o",	   "lo",	  "-p",	 "udp",
					     "--dport", port, "-j",	"NFQUEUE", "--queue-num", queue, NULL };
		if (run_cmd(c, rule, 0) < 0)
			goto out;
	}
	for (int i = 1; i <= NFQ_PACKETS; i++) {
		char m[16];
		snprintf(m, sizeof(m), "nfq-%d", i);
		if (sendto(sfd, m, strlen(m), 0, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			probe_fail(c, errno, "sendto(fd %d, 127.0.0.1:%d, datagram %d)", sfd, NFQ_PORT, i);
			goto out;
		}
	}
	t_sent = mono_ns();
	nfd = nfq_fd(h);
	while (st.n < NFQ_PACKETS) {
		ssize_t n;
		int left = CHECK_WAIT_MS - (int)((mono_ns() - t_sent) / 1000000ull);

		r = left > 0 ? wait_fd(nfd, POLLIN, left) : 0;
		if (r <= 0) {
			probe_fail(c, r < 0 ? errno : ETIMEDOUT,
				   "recv(nfqueue %d socket fd %d): %d of %d "
				   "packets queued",
				   NFQ_QUEUE, nfd, st.n, NFQ_PACKETS);
			goto out;
		}
		n = recv(nfd, buf, sizeof(buf), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			probe_fail(c, errno, "recv(nfqueue %d socket fd %d)", NFQ_QUEUE, nfd);
			goto out;
		}
		nfq_handle_packet(h, buf, (int)n);
	}
	for (int i = 0; i < NFQ_PACKETS; i++) {
		if (!st.payload_ok[i]) {
			probe_failx(c, "queued packet %d (id %u) is not the datagram \"nfq-%d\"", i + 1, st.ids[i], i + 1);
			goto out;
		}
		if (i > 0 && st.ids[i] <= st.ids[i - 1]) {
			probe_failx(c, "queued packet ids not increasing: %u then %u", st.ids[i - 1], st.ids[i]);
			goto out;
		}
		max_id = st.ids[i];
	}
	/* Held: nothing may reach the receiver before the verdict. */
	r = wait_fd(rfd, POLLIN, 200);
	if (r != 0) {
		if (r < 0)
			probe_fail(c, errno, "poll(fd %d, 127.0.0.1:%d)", rfd, NFQ_PORT);
		else
			probe_failx(c, "a datagram reached 127.0.0.1:%d while the NFQUEUE held it", NFQ_PORT);
		goto out;
	}
	t_verdict = mono_ns();
	if (nfq_set_verdict_batch(qh, max_id, NF_ACCEPT) < 0) {
		probe_fail(c, errno, "nfq_set_verdict_batch(queue %d, id %u, NF_ACCEPT)", NFQ_QUEUE, max_id);
		goto out;
	}
	for (int i = 1; i <= NFQ_PACKETS; i++) {
		char want[16];
		ssize_t n;

		snprintf(want, sizeof(want), "nfq-%d", i);
		r = wait_fd(rfd, POLLIN, CHECK_WAIT_MS);
		if (r <= 0) {
			probe_fail(c, r < 0 ? errno : ETIMEDOUT,
				   "recv(fd %d, 127.0.0.1:%d) of released "
				   "datagram %d",
				   rfd, NFQ_PORT, i);
			goto out;
		}
		n = recv(rfd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			probe_fail(c, errno, "recv(fd %d, 127.0.0.1:%d)", rfd, NFQ_PORT);
			goto out;
		}
		if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0) {
			probe_failx(c, "released datagram %d is \"%.*s\", expected \"%s\"", i, (int)(n > 32 ? 32 : n), buf, want);
			goto out;
		}
	}
	probe_ok(c,
		 "fresh netns: iptables NFQUEUE rule sent %d UDP datagrams to queue %d (ids "
		 "%u..%u); held %.1f ms with nothing delivered, then one nfq_set_verdict_batch"
		 "(id %u, NF_ACCEPT) released all %d, received in order",
		 NFQ_PACKETS, NFQ_QUEUE, st.ids[0], max_id, (double)(t_verdict - t_sent) / 1e6, max_id, NFQ_PACKETS);
out:
	if (qh)
		nfq_destroy_queue(qh);
	if (h)
		nfq_close(h);
	if (sfd >= 0)
		close(sfd);
	if (rfd >= 0)
		close(rfd);
	return c->ok ? 0 : -1;
}
