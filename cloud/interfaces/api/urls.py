from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from . import registry, views

app_name = "api"

team_router = DefaultRouter(trailing_slash=True)
team_router.include_root_view = False
team_router.register("environments", views.EnvironmentViewSet, basename="environment")
team_router.register("vms", views.VirtualMachineViewSet, basename="vm")
team_router.register("releases", views.ReleaseViewSet, basename="release")
team_router.register("jobs", views.JobViewSet, basename="job")
team_router.register("containers", views.ContainerViewSet, basename="container")
team_router.register("secrets", views.SecretViewSet, basename="secret")

urlpatterns = [
    path("v1/registry/", registry.RegistryAddress.as_view(), name="registry-address"),
    path("v1/registry/token", registry.RegistryToken.as_view(), name="registry-token"),
    path("v1/registry/events", registry.RegistryEvents.as_view(), name="registry-events"),
    path("v1/teams/<str:team>/images/", registry.TeamImageList.as_view(), name="team-image-list"),
    path(
        "v1/teams/<str:team>/images/<int:image_id>/",
        registry.TeamImageDetail.as_view(),
        name="team-image-detail",
    ),
    path(
        "v1/teams/<str:team>/registries/",
        registry.TeamRegistryList.as_view(),
        name="team-registry-list",
    ),
    path(
        "v1/teams/<str:team>/registries/<int:registry_id>/",
        registry.TeamRegistryDetail.as_view(),
        name="team-registry-detail",
    ),
    path("v1/teams/", views.TeamList.as_view(), name="team-list"),
    path("v1/flavors/", views.FlavorList.as_view(), name="flavor-list"),
    path("v1/images/", views.ImageList.as_view(), name="image-list"),
    path("v1/teams/<str:team>/audit/", views.AuditEventList.as_view(), name="audit-list"),
    path("v1/teams/<str:team>/", include(team_router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]
