package http

import (
	"encoding/json"
	"fmt"
	nethttp "net/http"
	"strconv"

	"github.com/allot/allot"
)

// rpdeItem is one item of an RPDE page (https://openactive.io/realtime-paged-data-exchange/).
type rpdeItem struct {
	ID       string          `json:"id"`
	Kind     string          `json:"kind"`
	State    string          `json:"state"`
	Modified int64           `json:"modified"`
	Data     json.RawMessage `json:"data,omitempty"`
}

type rpdePage struct {
	Next    string     `json:"next"`
	Items   []rpdeItem `json:"items"`
	License string     `json:"license"`
}

// ordersFeed serves the Orders feed in RPDE form, paged by change number:
// each order once, at its latest change; the next URL is built from the
// last item, and the last page (no items) points at itself.
func (s *Server) ordersFeed(r *nethttp.Request) (any, error) {
	q := r.URL.Query()
	var after int64
	if v := q.Get("afterChangeNumber"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, allot.Invalid("afterChangeNumber", "afterChangeNumber must be an integer, got %q", v)
		}
		after = n
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		return nil, err
	}
	items, err := s.eng.OrdersFeed(r.Context(), after, limit)
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https" // directly, or behind a TLS-terminating proxy
	}
	base := fmt.Sprintf("%s://%s%s", scheme, r.Host, r.URL.Path)
	if s.publicURL != "" {
		base = s.publicURL + r.URL.Path
	}
	page := rpdePage{Items: []rpdeItem{}, License: "https://creativecommons.org/licenses/by/4.0/"}
	if len(items) == 0 {
		page.Next = base + "?" + r.URL.RawQuery
		if r.URL.RawQuery == "" {
			page.Next = base
		}
	}
	for _, it := range items {
		ri := rpdeItem{ID: it.ID, Kind: "Order", State: "updated", Modified: it.ChangeNo, Data: it.Data}
		if it.Deleted {
			ri.State, ri.Data = "deleted", nil
		}
		page.Items = append(page.Items, ri)
		next := fmt.Sprintf("%s?afterChangeNumber=%d", base, it.ChangeNo)
		if limit > 0 {
			next += fmt.Sprintf("&limit=%d", limit)
		}
		page.Next = next
	}
	return page, nil
}
