"""The runner's time-left estimate: from the jobs' kinds and sizes, not from the mean of the first jobs."""
import pytest

from removalnet.experiment.estimate import PRIOR_SECONDS, RunEstimate, format_left, job_work

# an audit-like run (the training jobs first, the cheap score jobs last) and what each job really takes on a
# machine much slower than the priors, and unevenly so per kind (seconds per unit: iteration or job)
TRUE = {"import": 3.0, "train": 1.0, "attack": 1.5, "fingerprint": 200.0, "score": 40.0}


def _jobs():
    jobs = [{"id": "victim", "kind": "train", "config": {"weights": "model.pt", "train": {"iterations": 300}}}]
    jobs += [{"id": f"ref{i}", "kind": "train", "config": {"train": {"iterations": 300}}} for i in range(3)]
    jobs += [{"id": f"att{i}", "kind": "attack", "config": {"params": {"iterations": 0 if i == 6 else 150}}}
             for i in range(7)]
    jobs += [{"id": f"fp{i}", "kind": "fingerprint", "config": {}} for i in range(5)]
    jobs += [{"id": f"score{i}", "kind": "score", "config": {}} for i in range(11)]
    return jobs


def _true(job):
    cls, units = job_work(job)
    return TRUE[cls] * units


def test_job_work_reads_the_iterations():
    jobs = {j["id"]: j for j in _jobs()}
    assert job_work(jobs["victim"]) == ("import", 1.0) and job_work(jobs["ref0"]) == ("train", 300.0)
    assert job_work(jobs["att0"]) == ("attack", 150.0) and job_work(jobs["att6"]) == ("attack", 1.0)
    assert job_work({"kind": "train", "config": {"train": {"epochs": 10}}}) == ("train-epochs", 10.0)
    assert job_work(jobs["score0"]) == ("score", 1.0) and job_work({"kind": "study"}) == ("study", 1.0)


def test_after_the_training_jobs_the_score_jobs_are_estimated_within_a_factor_2():
    jobs = _jobs()
    est = RunEstimate(jobs)
    assert est.seconds_left() == pytest.approx(sum(PRIOR_SECONDS[job_work(j)[0]] * job_work(j)[1] for j in jobs))
    trained = jobs[:4]
    for j in trained:
        est.finish(j, _true(j))
    scores = [j for j in jobs if j["kind"] == "score"]
    true_scores = sum(_true(j) for j in scores)
    guess_scores = sum(est.rate("score") * job_work(j)[1] for j in scores)
    assert 0.5 <= guess_scores / true_scores <= 2.0
    # what the mean over the finished jobs says (the default of a progress bar) is far off: the score jobs are cheap
    naive = sum(_true(j) for j in trained) / len(trained) * len(scores)
    assert naive / true_scores > 2.0
    # the whole rest of the run, too
    rest = jobs[4:]
    assert 0.5 <= est.seconds_left() / sum(_true(j) for j in rest) <= 2.0
    # once a job of a kind has finished, that kind is estimated from it (exactly, when all jobs of it cost alike)
    for j in rest[:-len(scores) + 1]:
        est.finish(j, _true(j))
    assert est.seconds_left() == pytest.approx(sum(_true(j) for j in scores[1:]), rel=1e-9)
    for j in scores[1:]:
        est.skip(j)
    assert est.seconds_left() == 0


def test_an_unknown_kind_takes_the_default_prior_and_the_format_reads():
    est = RunEstimate([{"id": "x", "kind": "mystery", "config": {}}])
    assert est.seconds_left() > 0 and est.speed_factor() == 1.0
    assert format_left(12) == "~12 s left" and format_left(12 * 60) == "~12 min left"
    assert format_left(2.5 * 3600) == "~2.5 h left" and format_left(0.2) == "~1 s left"
