"""The environment page's network picture: its layout (no browser needed) and
the page that draws it."""

import pytest

from cloud.models import Container, PortForward, Release, Service, VirtualMachine
from cloud.selectors.segment_map import CHIPS_PER_VM, segment_map
from cloud.services.environments import create_environment
from tests.portal.conftest import finish_job
from tests.services.conftest import catalogue  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def overlaps(a, b) -> bool:
    return not (
        a.x + a.width <= b.x or b.x + b.width <= a.x or a.y + a.height <= b.y or b.bottom <= a.y
    )


def inside(inner, outer) -> bool:
    return (
        outer.x <= inner.x
        and inner.x + inner.width <= outer.x + outer.width
        and outer.y <= inner.y
        and inner.bottom <= outer.bottom
    )


@pytest.fixture
def segmented(make_team, catalogue, settings):  # noqa: F811 - the imported fixture
    """An environment of five VMs on a segment; three replicas of `api` and one of
    `web`, `web` published on the first VM."""
    settings.STRATA_SUBNET_POOL, settings.STRATA_SUBNET_PREFIX = ["10.240.0.0/16"], "24"
    team, admin = make_team("alpha")
    job = create_environment(user=admin, team=team, name="shop", kind="dev", vm_count=5)
    finish_job(job)
    env = job.environment
    vms = list(VirtualMachine.objects.filter(environment=env).order_by("name"))
    for name, placed, health in (
        ("api", [vms[0], vms[1], vms[1]], "healthy"),
        ("web", [vms[0]], "starting"),
    ):
        service = Service.objects.create(
            environment=env, name=name, image=f"{name}:1", ports=[8080]
        )
        release = Release.objects.create(
            service=service, version=2, image_digest="sha256:" + "c" * 64, spec={}
        )
        for index, vm in enumerate(placed):
            Container.objects.create(
                vm=vm,
                service=service,
                release=release,
                name=f"{name}-{index}",
                state="running",
                health=health,
            )
    PortForward.objects.create(host=vms[0].host, host_port=20080, vm=vms[0], guest_port=8080)
    PortForward.objects.create(host=vms[0].host, host_port=20022, vm=vms[0], guest_port=22)
    return team, env, vms, admin


def test_the_picture_places_every_vm_inside_the_segment_with_its_replicas(segmented):
    team, env, vms, _ = segmented
    picture = segment_map(team, env)
    assert picture.title == f"Segment {env.subnet}"
    assert f"egress {env.egress}" in picture.summary
    assert [node.name for node in picture.vms] == [vm.name for vm in vms]
    assert [node.address for node in picture.vms] == [vm.segment_ip for vm in vms]
    assert all(vm.segment_ip for vm in vms)
    for node in picture.vms:
        assert inside(node.box, picture.segment)
        for chip in node.chips:
            assert inside(chip.box, node.box)
    # Five VMs: a row of four and a second row; no two boxes overlap.
    boxes = [node.box for node in picture.vms]
    assert len({box.y for box in boxes}) == 2
    assert not any(overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    chips = {node.name: [(chip.label, chip.health) for chip in node.chips] for node in picture.vms}
    assert chips[vms[0].name] == [("api v2", "healthy"), ("web v2", "starting")]
    assert chips[vms[1].name] == [("api v2", "healthy"), ("api v2", "healthy")]
    assert chips[vms[2].name] == []
    assert inside(picture.segment, type(picture.segment)(0, 0, picture.width, picture.height))


def test_published_ports_sit_above_the_segment_and_link_to_their_vm(segmented):
    team, env, vms, _ = segmented
    picture = segment_map(team, env)
    # The SSH forward is management, not a published service port.
    assert [port.label for port in picture.ports] == [f"127.0.0.1:20080 → {vms[0].name}:8080"]
    port = picture.ports[0]
    target = picture.vms[0].box
    assert port.box.bottom <= picture.segment.y
    assert port.link == (port.box.centre_x, port.box.bottom, target.centre_x, target.y)
    assert "127.0.0.1:20080" in picture.description


def test_many_ports_wrap_into_rows_and_push_the_segment_down(segmented):
    team, env, vms, _ = segmented
    one_row = segment_map(team, env).segment.y
    for index in range(12):
        PortForward.objects.create(
            host=vms[1].host, host_port=21000 + index, vm=vms[1], guest_port=9000 + index
        )
    picture = segment_map(team, env)
    assert len(picture.ports) == 13
    assert picture.segment.y > one_row
    assert all(port.box.bottom <= picture.segment.y for port in picture.ports)
    assert all(port.box.x + port.box.width <= picture.width for port in picture.ports)
    boxes = [port.box for port in picture.ports]
    assert not any(overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_more_replicas_than_fit_are_counted_in_a_last_chip(segmented):
    team, env, vms, _ = segmented
    service = Service.objects.get(environment=env, name="api")
    release = service.releases.get()
    for index in range(CHIPS_PER_VM + 3):
        Container.objects.create(
            vm=vms[2], service=service, release=release, name=f"api-x{index}", state="running"
        )
    node = next(node for node in segment_map(team, env).vms if node.name == vms[2].name)
    assert len(node.chips) == CHIPS_PER_VM
    assert node.chips[-1].label == "+4 more" and node.chips[-1].health == "more"
    assert all(inside(chip.box, node.box) for chip in node.chips)


def test_without_a_segment_the_picture_says_so(world):
    picture = segment_map(world["team"], world["env"])
    assert picture.title == "No segment"
    assert {node.address for node in picture.vms} == {"no address"}


def test_the_environment_page_draws_the_picture(segmented, client):
    team, env, vms, admin = segmented
    client.force_login(admin)
    page = client.get(f"/t/{team.name}/environments/{env.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<figure class="segment-map">' in html
    assert f'<title id="segment-map-title">Segment {env.subnet}</title>' in html
    for vm in vms:
        assert vm.segment_ip in html
    assert html.count('class="replica health-healthy"') == 3
    assert "127.0.0.1:20080 → " in html


def test_another_teams_environment_draws_nothing_of_it(world, client):
    client.force_login(world["outsider"])
    team, env = world["team"], world["env"]
    assert client.get(f"/t/{team.name}/environments/{env.pk}/").status_code == 404
    # Scoping is in the selector too: another team's view of the env has no VMs.
    assert segment_map(world["other_team"], env).vms == ()
