/* The peer of a unix socket, to name it when the socket is refused: the
 * peer's inode from NETLINK_SOCK_DIAG (UNIX_DIAG_PEER), then the process
 * holding that inode (a scan of /proc/N/fd). Best effort: any failure just
 * leaves the peer unnamed. */
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include "engine.h"
#include "fdobj.h"

static uint32_t unix_peer_ino(uint64_t ino)
{
	int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (s < 0)
		return 0;
	struct timeval tv = { 0, 200000 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	struct {
		struct nlmsghdr nh;
		struct unix_diag_req r;
	} req;
	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = sizeof(req);
	req.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	req.nh.nlmsg_flags = NLM_F_REQUEST;
	req.r.sdiag_family = AF_UNIX;
	req.r.udiag_states = ~0U;
	req.r.udiag_ino = (uint32_t)ino;
	req.r.udiag_show = UDIAG_SHOW_PEER;
	req.r.udiag_cookie[0] = req.r.udiag_cookie[1] = ~0U; /* INET_DIAG_NOCOOKIE: any */
	struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
	uint32_t peer = 0;
	if (sendto(s, &req, sizeof(req), 0, (struct sockaddr *)&nl, sizeof(nl)) == (ssize_t)sizeof(req)) {
		union {
			char b[8192];
			struct nlmsghdr align;
		} u;
		ssize_t n = recv(s, u.b, sizeof(u.b), 0);
		for (struct nlmsghdr *h = (struct nlmsghdr *)u.b; n > 0 && NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_DONE)
				break;
			struct unix_diag_msg *m = NLMSG_DATA(h);
			if (m->udiag_ino != (uint32_t)ino)
				continue;
			int alen = h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
			for (struct rtattr *a = (struct rtattr *)(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen))
				if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= sizeof(uint32_t))
					memcpy(&peer, RTA_DATA(a), sizeof(peer));
			break;
		}
	}
	close(s);
	return peer;
}

void sock_peer_describe(uint64_t ino, char *out, size_t len)
{
	out[0] = 0;
	uint32_t peer = unix_peer_ino(ino);
	if (!peer)
		return;
	char want[48], comm[64];
	snprintf(want, sizeof(want), "socket:[%u]", peer);
	int hfd = -1;
	pid_t h = fd_holder(want, false, &hfd, comm, sizeof(comm));
	if (h)
		snprintf(out, len, ", a unix socket connected to pid %d (%s) fd %d%s", h, comm, hfd,
			 is_app_pid(h) ? " inside the app" : " outside the app");
	else
		snprintf(out, len, ", a unix socket connected to socket:[%u] (holder not found)", peer);
	err_clear();
}
