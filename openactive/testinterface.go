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
	id := testPrefix + newToken()[:12]
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

// testPrefix marks the resources the test interface makes.
const testPrefix = "ti-"

// deleteTestData retires every opportunity the test interface made: they
// leave the feeds as deleted items. (Orders made on them stand.)
func (h *Handler) deleteTestData(w nethttp.ResponseWriter, r *nethttp.Request) {
	ctx := r.Context()
	retired := map[string]bool{}
	for after := int64(0); ; {
		chs, err := h.eng.OpportunityFeed(ctx, after, 1000)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for _, c := range chs {
			after = c.ChangeNo
			if c.Key != "" || c.Deleted || retired[c.ResourceID] || !strings.HasPrefix(c.ResourceID, testPrefix) {
				continue
			}
			if err := h.eng.RetireOpportunities(ctx, c.ResourceID); err != nil {
				h.fail(w, r, err)
				return
			}
			retired[c.ResourceID] = true
		}
		if len(chs) < 1000 {
			break
		}
	}
	w.WriteHeader(nethttp.StatusNoContent)
}
