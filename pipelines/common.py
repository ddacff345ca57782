"""Helpers shared by the pipelines."""

from kfp import kubernetes

from components.deploy.component import application_test, qa_gate, release_model
from components.package.component import package_model
from components.register.component import register_model
from components.settings import (
    ACCELERATOR_COUNT,
    ACCELERATOR_TYPE,
    COMPONENT_IMAGE,
    HPO_SLOTS,
    S3_ENDPOINT,
    STORAGE_SECRET,
    STORAGE_SECRET_KEYS,
    TRAINER_NODES,
    TRIALS_ON_TRAINER,
    node_selector,
    tolerations,
)
from components.train.component import (
    hpo_trial,
    hpo_trial_trainjob,
    train_best,
    train_best_trainjob,
)


def with_storage_credentials(task):
    """Gives a task the S3 endpoint and credentials from the storage Secret (cluster only).

    The Secret is optional, so the same pipeline runs against a local store where there is
    no Secret; secrets never travel as pipeline parameters. The endpoint is a compile-time
    setting (``mlops compile --s3-endpoint``, default KFP 2.16's SeaweedFS), set on the
    task's container; kfp.local does not apply it, so local runs keep their own environment.
    """
    kubernetes.use_secret_as_env(task, secret_name=STORAGE_SECRET,
                                 secret_key_to_env=STORAGE_SECRET_KEYS, optional=True)
    if S3_ENDPOINT and "AWS_ENDPOINT_URL" not in STORAGE_SECRET_KEYS.values():
        task.set_env_variable("AWS_ENDPOINT_URL", S3_ENDPOINT)
    return task


def never_cached(task):
    """Turns KFP's cache off for a task that reads something mutable.

    KFP 2.16 caches a task by its component and input values only: a task that reads a data
    lake at an unchanged URI, or a registry alias, would be served the old result.
    """
    task.set_caching_options(False)
    return task


def with_resources(task, cpu: str = "1", memory: str = "2G", cpu_limit: str = "2",
                   memory_limit: str = "8G", retries: int = 0):
    """Requests and limits of CPU and memory, and retries where repeating the task is safe."""
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory).set_memory_limit(memory_limit)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def _trainjob_arguments() -> dict:
    """The TrainJob parameters of a task that launches one (``--trainer-nodes`` above 1)."""
    gpus = ACCELERATOR_COUNT if ACCELERATOR_TYPE else 0
    return dict(image=COMPONENT_IMAGE, nodes=TRAINER_NODES, procs_per_node=max(1, gpus),
                accelerator_resource=ACCELERATOR_TYPE if gpus else "", accelerator_count=gpus,
                storage_secret=STORAGE_SECRET,
                storage_secret_keys=",".join(f"{k}={v}" for k, v in STORAGE_SECRET_KEYS.items()))


def search_and_train(train, work_root, search_space, search_mode, seed, trial_epochs,
                     image_size, epochs):
    """The hyperparameter search (one task per trial slot) and the training of the best trial.

    Trial slots are unrolled instead of a ``dsl.ParallelFor``: the cluster runs them in
    parallel all the same, and kfp.local (2.16) cannot run anything that depends on a loop.

    Returns:
        (the trial tasks, the train_best task).
    """
    from kfp import dsl

    trials = []
    for slot in range(HPO_SLOTS):
        common = dict(train=train, slot=slot, n_slots=HPO_SLOTS, work_root=work_root,
                      run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, search_space=search_space,
                      search_mode=search_mode, seed=seed, trial_epochs=trial_epochs,
                      image_size=image_size)
        if TRIALS_ON_TRAINER:  # each trial a TrainJob, like the final training's
            trial = hpo_trial_trainjob(**common, **_trainjob_arguments())
            trial.set_display_name(f"hpo trial {slot} ({TRAINER_NODES}-node TrainJob)")
        else:
            trial = hpo_trial(**common)
            trial.set_display_name(f"hpo trial {slot}")
        trials.append(trial)
    if TRAINER_NODES > 1:  # a Kubeflow Trainer TrainJob that this task creates and watches
        best = train_best_trainjob(
            train=train, work_root=work_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            n_slots=HPO_SLOTS, epochs=epochs, **_trainjob_arguments()).after(*trials)
        best.set_display_name(f"train best ({TRAINER_NODES}-node TrainJob)")
    else:
        best = train_best(train=train, work_root=work_root,
                          run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, n_slots=HPO_SLOTS,
                          epochs=epochs).after(*trials)
        best.set_display_name("train best")
    return trials, best


def with_training_resources(trials, best):
    """Resources of the search trials and the final training, from the compile-time settings.

    On CPU: 2-4 CPUs and 4-8 GB each. With ``mlops compile --accelerator TYPE
    --accelerator-count N``: each task asks for N accelerators of that type
    (``set_accelerator_type``/``set_accelerator_limit``) and CPU and memory that fit a GPU
    node (4-8 CPUs, 16-32 GB), plus the node selector and tolerations given. With
    ``--trainer-nodes`` above 1 the final training's task only launches and watches the
    TrainJob (small requests); the TrainJob's nodes get the accelerators. With
    ``--trials-on-trainer`` the trial tasks are such launchers too.
    """
    launchers = [best] if TRAINER_NODES > 1 else []
    if TRIALS_ON_TRAINER:
        launchers += trials
    for task in [*trials, best]:
        if any(task is launcher for launcher in launchers):
            with_resources(task, "500m", "1G", "1", "2G")
            continue
        if ACCELERATOR_TYPE:
            with_resources(task, "4", "16G", "8", "32G", retries=1)
            task.set_accelerator_type(ACCELERATOR_TYPE)
            task.set_accelerator_limit(ACCELERATOR_COUNT)
        else:
            with_resources(task, "2", "4G", "4", "8G", retries=1)
        for key, value in node_selector().items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in tolerations():
            kubernetes.add_toleration(task, **toleration)
    return trials, best


def package_register_release(*, model, train, test, evaluation, registry_uri, model_name,
                             deploy_target, namespace, serving_root, p95_slo_ms, canary_steps,
                             canary_requests_per_step, canary_bake_seconds, require_approval,
                             approval_timeout_s, lineage_extra=None, after_release=None,
                             cluster=None):
    """Packages a blessed model, registers it, tests it as an application and, if that
    passes, releases it by canary. Call it inside the pipeline's ``dsl.If`` on the quality
    gate.

    Args:
        model, train, test, evaluation: The trained model, the splits and the evaluation.
        lineage_extra: JSON (a string or a task output) of further lineage for the register
            step, or None.
        after_release: Called with the tasks so far (release included) inside the
            application test's branch; returns further tasks to run after a release.
        cluster: The KServe parameters of application_test and release_model
            (predictor_image, predictor_service_account, predictor_secret), or None for
            their defaults.

    Returns:
        Task name -> task (package, register, apptest, qa, release, and whatever
        ``after_release`` added).
    """
    from kfp import dsl

    package = package_model(model=model, test=test, evaluation=evaluation,
                            model_name=model_name)
    package.set_display_name("package ONNX")
    extra = {} if lineage_extra is None else {"lineage_extra": lineage_extra}
    register = register_model(package=package.outputs["package"], model=model,
                              evaluation=evaluation, train=train, registry_uri=registry_uri,
                              model_name=model_name,
                              pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **extra)
    register.set_display_name("register")
    apptest = application_test(test=test, evaluation=evaluation, registry_uri=registry_uri,
                               version=register.outputs["version"], model_name=model_name,
                               target=deploy_target, namespace=namespace,
                               serving_root=serving_root, p95_slo_ms=p95_slo_ms,
                               **(cluster or {}))
    apptest.set_display_name("application test")
    qa = qa_gate(qa_report=apptest.outputs["qa_report"])
    qa.set_display_name("QA gate")
    tasks = {"package": package, "register": register, "apptest": apptest, "qa": qa}
    with dsl.If(qa.output == True, name="qa-passed"):  # noqa: E712 (KFP DSL)
        release = release_model(test=test, registry_uri=registry_uri,
                                version=register.outputs["version"], model_name=model_name,
                                target=deploy_target, namespace=namespace,
                                serving_root=serving_root, canary_steps=canary_steps,
                                requests_per_step=canary_requests_per_step,
                                bake_seconds=canary_bake_seconds, max_p95_ms=p95_slo_ms,
                                require_approval=require_approval,
                                approval_timeout_s=approval_timeout_s,
                                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                **(cluster or {}))
        release.set_display_name("canary release")
        tasks["release"] = release
        if after_release is not None:
            tasks.update(after_release(tasks))
    return tasks
