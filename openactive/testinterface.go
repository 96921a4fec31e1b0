package openactive

import (
	"encoding/json"
	"fmt"
	nethttp "net/http"
	"strings"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// criteria are the test suite's opportunity criteria this booking system
// can make: spaces, and whether it is free.
var criteria = map[string]struct {
	spaces int
	free   bool
}{
	"TestOpportunityBookable":           {10, false},
	"TestOpportunityBookableFree":       {10, true},
	"TestOpportunityBookableNonFree":    {10, false},
	"TestOpportunityBookableFiveSpaces": {5, false},
	"TestOpportunityBookableOneSpace":   {1, false},
}

// createTestOpportunity makes a new SessionSeries with one
// ScheduledSession that meets the requested criteria (the test interface).
func (h *Handler) createTestOpportunity(w nethttp.ResponseWriter, r *nethttp.Request) {
	var req struct {
		Type     string `json:"@type"`
		Criteria string `json:"test:testOpportunityCriteria"`
	}
	if _, err := readBody(r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	name := req.Criteria[strings.LastIndex(req.Criteria, "#")+1:]
	c, ok := criteria[name]
	if req.Type != "ScheduledSession" || !ok {
		h.write(w, 400, oaError("InvalidAPIRequestError", fmt.Sprintf("cannot make a %s matching %q", req.Type, req.Criteria), 400))
		return
	}
	id := "ti-" + newToken()[:12]
	in := engine.ResourceInput{ID: id, Name: "Test session " + strings.TrimPrefix(name, "TestOpportunity"), Kind: allot.KindSlot, Capacity: &c.spaces,
		Slots: []engine.SlotInput{{ID: "s1", StartsAt: ptr(time.Now().UTC().Add(48 * time.Hour).Truncate(time.Hour))}}}
	if !c.free {
		in.Price = &allot.Money{Minor: 1000, Scale: 2, Currency: "GBP"}
	}
	if _, err := h.eng.CreateResource(r.Context(), in); err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", MediaType)
	w.WriteHeader(201)
	_ = json.NewEncoder(w).Encode(obj{"@context": contextURL, "@type": "ScheduledSession", "@id": h.ids.session(id, "s1")})
}

func ptr[T any](v T) *T { return &v }
