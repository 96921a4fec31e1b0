package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/allot/allot"
)

// DeadLetter is a step that will not run again by itself: it exhausted its
// attempts (River: discarded) or failed permanently (cancelled).
type DeadLetter struct {
	ID       int64     `json:"id"`
	Step     string    `json:"step"`
	OrderID  string    `json:"order_id,omitempty"`
	Cause    string    `json:"cause,omitempty"`
	State    string    `json:"state"`
	Attempts int       `json:"attempts"`
	Reason   string    `json:"reason"`
	Errors   []string  `json:"errors"`
	FailedAt time.Time `json:"failed_at"`
}

// stepKinds are the jobs that are workflow steps (the sweep, which the next
// run replaces, is not one).
var stepKinds = []string{string(allot.StepCharge), string(allot.StepRefund), string(allot.StepSeller), string(allot.StepNotify),
	string(allot.StepPaymentTimeout), string(allot.StepSellerTimeout)}

var deadStates = []rivertype.JobState{rivertype.JobStateDiscarded, rivertype.JobStateCancelled}

func deadLetter(j *rivertype.JobRow) DeadLetter {
	d := DeadLetter{ID: j.ID, Step: j.Kind, State: string(j.State), Attempts: j.Attempt, Errors: []string{}}
	var a stepArgs
	if json.Unmarshal(j.EncodedArgs, &a) == nil {
		d.OrderID, d.Cause = a.OrderID, a.Cause
	}
	for _, e := range j.Errors {
		d.Errors = append(d.Errors, e.Error)
	}
	if n := len(j.Errors); n > 0 {
		d.Reason = j.Errors[n-1].Error
		d.FailedAt = j.Errors[n-1].At.UTC()
	}
	if j.FinalizedAt != nil {
		d.FailedAt = j.FinalizedAt.UTC()
	}
	return d
}

// DeadLetters lists dead steps, newest first, after the one with id
// before (0: from the newest), at most limit.
func (r *Runner) DeadLetters(ctx context.Context, before int64, limit int) ([]DeadLetter, error) {
	p := river.NewJobListParams().States(deadStates...).Kinds(stepKinds...).OrderBy(river.JobListOrderByID, river.SortOrderDesc).First(limit)
	if before > 0 {
		p = p.Where("id < @before", river.NamedArgs{"before": before})
	}
	res, err := r.q.list(ctx, p)
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(res.Jobs))
	for _, j := range res.Jobs {
		out = append(out, deadLetter(j))
	}
	return out, nil
}

// Retry makes a dead step run again now (River allows one more attempt
// when it had used them all). Retrying a step
// that is not dead is refused.
func (r *Runner) Retry(ctx context.Context, id int64) (DeadLetter, error) {
	j, err := r.q.get(ctx, id)
	if errors.Is(err, river.ErrNotFound) {
		return DeadLetter{}, allot.Errorf(allot.CodeNotFound, "dead letter %d does not exist", id)
	}
	if err != nil {
		return DeadLetter{}, err
	}
	if !slices.Contains(stepKinds, j.Kind) {
		return DeadLetter{}, allot.Errorf(allot.CodeNotFound, "dead letter %d does not exist", id)
	}
	if j.State != rivertype.JobStateDiscarded && j.State != rivertype.JobStateCancelled {
		return DeadLetter{}, allot.Errorf(allot.CodeInvalidTransition, "step %d is %s, not dead; only dead steps are retried", id, j.State)
	}
	j, err = r.q.retry(ctx, id)
	if err != nil {
		return DeadLetter{}, err
	}
	return deadLetter(j), nil
}
